"""Self-speculative decoding for models trained with ``clm`` (GPT-BERT's ``mntp`` + ``clm``, AntLM).

The same weights read two ways (research/ltg_bert.md §6): in masked mode (bidirectional attention,
``[MASK]``s ahead) the outputs at p-1 .. p+k-2 (after ``mntp``; at p .. p+k-1 after AntLM's ``mlm``)
predict k tokens at once; in causal mode they are an
ordinary left-to-right LM. Each round drafts k tokens in one masked pass and checks them in one causal
pass (Stern et al. 2018, blockwise parallel decoding; Leviathan et al. 2023, speculative decoding):

- greedy (temperature 0): keep the drafts while each equals the causal argmax; the first that does not
  is replaced by the causal argmax (the correction); when all k agree, the causal prediction after them
  is free (the bonus). The output is greedy left-to-right decoding, token for token.
- sampling: draft token d at a position is drawn from the masked-mode distribution q; it is kept with
  probability min(1, p(d) / q(d)), p the causal distribution there (same temperature, top-k, top-p and
  repetition controls on both); on the first rejection the token is drawn from norm(max(0, p - q)) and
  the round ends (Leviathan et al. 2023, Algorithm 1). Each emitted token then has exactly the
  left-to-right sampling distribution.

Both passes go through one key/value cache (``kv_cache.WindowCache``) holding the verified prefix, which
was computed causally; the draft window sees it and itself bidirectionally, the verification window
sees it causally, and both windows' rows are dropped from the cache afterwards except the accepted ones.
A batch shares one cache, so the cache advances by the fewest tokens any active row got this round.
A row that got more keeps them: its extra tokens are carried into the next window as given tokens
(neither drafted nor checked again; only their keys and values are recomputed), so each row moves at its
own acceptance rate, up to ``draft_length`` + 1 tokens ahead of the slowest. This keeps the rule exact:
what a row keeps is exactly what speculative sampling accepted for that row alone, and which rows are
slow does not depend on its draws. ``stats`` reports ``rounds``, ``mean_accepted`` (drafts accepted per
row and drafting round, carried tokens not counted), ``tokens_per_round`` (the cache's advance per
round), ``carried`` (tokens kept ahead of the slowest row, summed over rows and rounds), ``draft_rounds``
and ``causal_steps`` (rounds with and without a masked pass).

How many tokens to draft: a fixed ``draft_length``, or (the default) ``DraftSizer``, which sizes each
round from the drafts kept so far and drafts nothing (a plain causal step through the same cache, one
call) while drafting would cost more than it yields; rows ahead of the slowest then wait a round. The
size depends only on earlier rounds, never on this round's draws, so the rule stays exact.
"""

from __future__ import annotations

import torch

from masklm.generation.canvas import Canvas
from masklm.generation.kv_cache import WindowCache
from masklm.generation.repetition import banned_tokens
from masklm.generation.sampling import NEG_INF, Network, draw, scaled_scores


def accept_round(p_logits: torch.Tensor, q_logits: torch.Tensor, drafts: torch.Tensor, decide: torch.Tensor,
                 temperature: float, top_k: int | None, top_p: float | None,
                 generator: torch.Generator | None, ends: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Verify one round. p_logits ``[B, k+1, V]`` (causal, the last one after every draft), q_logits
    ``[B, k, V]`` (masked mode, what the drafts were drawn from), drafts ``[B, k]``, decide ``[B, k+1]``
    bool (positions the rule applies to; others hold given tokens and are kept), ends ``[B]`` long in 0..k
    (where each row's drafts end and its round stops at the latest; default k) -> (accepted positions per
    row ``[B]`` long in 0..ends, the token after them ``[B]``: the correction, or a draw from p at the end).

    Sampling reads p and q at the drafts through each row's log-normaliser, and builds whole float64
    distributions only for the one position per row where the round ends (the residual or the bonus)."""
    B, k = drafts.shape
    ends = torch.full((B,), k, dtype=torch.long, device=drafts.device) if ends is None else ends
    inside = torch.arange(k, device=drafts.device)[None, :] < ends[:, None]  # [B, k]
    if temperature == 0.0:
        target = p_logits.argmax(-1)  # [B, k+1]
        ok = (drafts == target[:, :k]) | ~decide[:, :k]
    else:
        V = p_logits.shape[-1]
        sp = scaled_scores(p_logits.flatten(0, 1), temperature, top_k, top_p).view(B, k + 1, V)
        sq = scaled_scores(q_logits.flatten(0, 1), temperature, top_k, top_p).view(B, k, V)
        at = drafts[..., None]
        pd = (sp[:, :k].gather(2, at).squeeze(2) - torch.logsumexp(sp[:, :k], -1)).double().exp()  # [B, k]
        qd = (sq.gather(2, at).squeeze(2) - torch.logsumexp(sq, -1)).double().exp()
        u = torch.rand(B, k, generator=generator, dtype=torch.float64, device=drafts.device)
        ok = (u * qd <= pd) | ~decide[:, :k]  # u < min(1, p/q), with q > 0 for a drawn token
    bad = (~(ok & inside)).long()
    accepted = torch.where(bad.any(1), bad.argmax(1), k) if k else ends.clone()  # [B]
    rows = torch.arange(B, device=drafts.device)
    if temperature == 0.0:
        return accepted, target[rows, accepted]
    after = torch.softmax(sp[rows, accepted].double(), -1)  # [B, V]: the bonus distribution, or p where rejected
    rejected = accepted < ends  # a draft was rejected (not the end of the row's drafts reached)
    if k == 0 or not bool(rejected.any()):
        return accepted, draw(after, generator)
    last = accepted.clamp(max=k - 1)
    residual = (torch.softmax(sp[rows, last].double(), -1) - torch.softmax(sq[rows, last].double(), -1)).clamp_min(0)
    use = rejected[:, None] & (residual.sum(1, keepdim=True) > 0)
    return accepted, draw(torch.where(use, residual, after), generator)


def _controls(net: Network, logits: torch.Tensor, x: torch.Tensor, col: int, gen: torch.Tensor) -> torch.Tensor:
    """The repetition controls for column ``col`` of each row, given the canvas ``x`` ``[B, W]`` up to
    ``col`` (later generated columns read as undecided) -> logits ``[B, V]`` (a new tensor)."""
    logits = logits.clone()
    context = x.clone()
    later = gen.clone()
    later[:, :col] = False
    context[later] = net.mask_id
    logits = net.adjust(logits, context)
    if net.no_repeat:
        known = (context != net.mask_id).tolist()
        for b, row in enumerate(context.tolist()):
            ban = banned_tokens(row, known[b], col, net.no_repeat)
            if ban:
                logits[b, sorted(ban)] = NEG_INF
    return logits


class DraftSizer:
    """How many tokens each row drafts in the next round: ``size() -> k`` in 0..limit; ``observe`` a round.

    Drafting pays only when the drafts agree with the causal reading often enough to cover the draft
    pass. With ``alpha[j]`` the estimated chance that a row's draft j is kept once drafts 0..j-1 were, a
    round of k drafts yields E(k) = 1 + sum_{j<k} prod_{i<=j} alpha[i] tokens per row and costs
    C(k) = 2 (1 + gamma k) + delta one-token causal steps (a draft and a verification call over k + 1
    columns, plus the acceptance test); k = 0 is a plain left-to-right step (E = C = 1, one call). The size
    is the k with the most tokens per unit of cost (the smaller k on a tie). ``alpha[j]`` = (kept + prior
    x weight) / (tried + weight), from counts discounted by ``decay`` every round: a stretch where drafts
    fail stops drafting, and drafting is tried again once that evidence has faded. Hugging Face's assisted
    generation adapts its draft length to acceptance too (``num_assistant_tokens_schedule``). The rule
    reads only the tokens, never the clock, so a seed gives the same text on every run.

    ``COSTS``: (gamma, delta) per device type. CPU: measured on a 2-core CPU with GPT-BERT tiny, 8 rows
    (docs/generation.md, "The default"). CUDA: an estimate (a window of a few columns costs about what
    one column does on a GPU), for ``benchmarks/gpu_check_generate.sh`` to confirm.
    """

    COSTS = {"cpu": (0.09, 0.2), "cuda": (0.02, 0.2)}

    def __init__(self, limit: int, device: str, prior: float = 0.9, weight: float = 1.0,
                 decay: float = 0.99) -> None:
        self.limit = limit
        self.gamma, self.delta = self.COSTS.get(device, self.COSTS["cuda"])
        self.prior, self.weight, self.decay = prior, weight, decay
        self.tried = [0.0] * limit  # plain floats: sizing runs every step, on a few numbers
        self.kept = [0.0] * limit

    def rate(self, k: int) -> float:
        """Expected tokens per row per unit of cost of a round with k drafts."""
        expected, reach = 1.0, 1.0
        for j in range(k):
            reach *= (self.kept[j] + self.prior * self.weight) / (self.tried[j] + self.weight)
            expected += reach
        return expected / (2 * (1 + self.gamma * k) + self.delta) if k else 1.0

    def size(self) -> int:
        return max(range(self.limit + 1), key=lambda k: (self.rate(k), -k))

    def observe(self, ordinal: torch.Tensor, reached: torch.Tensor, kept: torch.Tensor) -> None:
        """One round's drafts: ordinal ``[M]`` (a draft's index among its row's drafts), reached / kept
        ``[M]`` bool (checked, because every earlier draft of the row was kept / kept itself)."""
        ordinal = ordinal.clamp(max=self.limit - 1)
        tried = torch.bincount(ordinal[reached], minlength=self.limit).tolist()
        kept = torch.bincount(ordinal[kept], minlength=self.limit).tolist()
        self.tried = [t * self.decay + n for t, n in zip(self.tried, tried)]
        self.kept = [t * self.decay + n for t, n in zip(self.kept, kept)]

    def fade_round(self) -> None:
        """A round without drafts: the evidence fades all the same."""
        self.tried = [t * self.decay for t in self.tried]
        self.kept = [t * self.decay for t in self.kept]


def _window(gen: torch.Tensor, active: torch.Tensor, given: torch.Tensor, per_row: int, p: int) -> tuple:
    """A round's window from column p: gen ``[B, W]``, active ``[B]``, given ``[B]`` (carried tokens),
    per_row drafts -> (k window width, span (columns inside the canvas, <= k+1), cols ``[k+1]``, ends ``[B]``
    (each row drafts columns given .. ends-1, then stops), decide ``[B, k+1]`` (positions that get a new
    token), drafted ``[B, k]``, waiting ``[B]`` (rows ahead of the slowest that take no token this round))."""
    B, W = gen.shape
    k = min(max(per_row, int(given.max())), W - p)  # the window holds every row's carried tokens
    cols = torch.arange(k + 1, device=gen.device)
    ends = (given + per_row).clamp(max=k)
    decide = torch.zeros(B, k + 1, dtype=torch.bool, device=gen.device)
    span = min(k + 1, W - p)
    decide[:, :span] = gen[:, p:p + span] & active[:, None] & (cols[None, :span] >= given[:, None])
    decide &= cols[None, :] <= ends[:, None]
    # with no drafts, a row ahead of the slowest waits (takes no token), so the rows close up and the
    # window shrinks back to one column; its next token is drawn later, from the same distribution
    waiting = active & (given > 0) if per_row == 0 else torch.zeros_like(active)
    decide[waiting] = False
    drafted = decide[:, :k] & (cols[None, :k] < ends[:, None])
    return k, span, cols, ends, decide, drafted, waiting


def _draft(net: Network, store: WindowCache, x: torch.Tensor, gen: torch.Tensor, p: int, k: int,
           drafted: torch.Tensor, draft_shift: int, controls: bool, sampling: tuple) -> torch.Tensor:
    """The masked pass of a round: feed the last cached token, the carried tokens and masks for columns
    p .. p+k-1 bidirectionally, drop them from the cache again, and write a draft at each ``drafted``
    ``[B, k]`` column of ``x`` -> the draft logits ``[B, k, V]`` (what the drafts were drawn from)."""
    net.record(x)
    hidden = store.feed(x[:, p - 1:p + k], torch.full((k + 1,), p + k))
    store.truncate(p - 1)
    d = 1 - draft_shift  # window row of column p's prediction
    q_raw = net.ban(net.model.predict(hidden[:, d:d + k]).float())  # [B, k, V]: predicts columns p..p+k-1
    if not controls:  # every draft of the window in one draw (row-major, as the canvas is indexed)
        where = torch.zeros_like(gen)
        where[:, p:p + k] = drafted
        net.choose_and_write(x, where, q_raw[drafted], *sampling)
        return q_raw
    q_logits = torch.empty_like(q_raw)
    for i in range(k):  # drafts left to right, so the repetition controls see the earlier drafts
        q_logits[:, i] = _controls(net, q_raw[:, i], x, p + i, gen)
        where = torch.zeros_like(gen)
        where[:, p + i] = drafted[:, i]
        net.choose_and_write(x, where, q_logits[drafted[:, i], i], *sampling)
    return q_logits


def _causal_step(net: Network, store: WindowCache, x: torch.Tensor, gen: torch.Tensor, p: int, active: torch.Tensor,
                 controls: bool, sampling: tuple) -> None:
    """Column p of every active row from the causal reading alone (one call), as left-to-right decoding."""
    net.record(x)
    hidden = store.feed(x[:, p - 1:p], torch.arange(p, p + 1))  # [B, 1, D]
    logits = net.ban(net.model.predict(hidden[:, 0]).float())  # [B, V]
    if controls:
        logits = _controls(net, logits, x, p, gen)
    where = torch.zeros_like(gen)
    where[:, p] = gen[:, p] & active
    net.choose_and_write(x, where, logits[where[:, p]], *sampling)


@torch.no_grad()
def speculative_decode(net: Network, canvas: Canvas, mask_id: int, draft_length: int | None = 4,
                       temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                       generator: torch.Generator | None = None, stop_id: int | None = None,
                       draft_shift: int = 1, adaptive_limit: int = 4) -> dict:
    """Decode ``canvas`` in place -> stats ``{rounds, mean_accepted, tokens_per_round, carried, draft_rounds,
    causal_steps}``. ``draft_length``: tokens each row drafts per round, or None: sized every round by a
    ``DraftSizer`` up to ``adaptive_limit`` (0 drafts: a plain causal step). ``draft_shift``: where the
    masked reading predicts a mask at column j (j - 1 after ``mntp``, j after ``mlm``: AntLM)."""
    x, gen = canvas.ids, canvas.gen  # [B, W]
    B, W = x.shape
    lo = canvas.lo
    x[gen] = mask_id
    store = WindowCache(net.model, canvas.attention.bool())
    if lo > 1:  # the prompt, causally: the cache holds columns 0 .. p-2 before each round
        net.record(x)  # traces hold the whole canvas before each call
        store.feed(x[:, :lo - 1], torch.arange(1, lo))
    controls = bool(net.penalty or net.no_repeat)
    sampling = (temperature, top_k, top_p, generator)
    sizer = DraftSizer(adaptive_limit, x.device.type) if draft_length is None else None
    stopped = torch.zeros(B, dtype=torch.bool, device=x.device)
    carry = torch.zeros(B, dtype=torch.long, device=x.device)  # kept tokens of each row at p, p+1, ...
    remaining = gen.flip(1).cumsum(1).flip(1)  # [B, W]: generated positions at or after each column
    p, rounds, accepted_sum, row_rounds, committed, carried, draft_rounds = lo, 0, 0, 0, 0, 0, 0
    while p < W:
        active = ~stopped & (remaining[:, p] > 0)
        if not active.any():
            break
        per_row = sizer.size() if sizer is not None else draft_length
        given = carry  # [B]: columns p .. p+given-1 of each row were kept last round
        if per_row == 0 and not bool(given.any()):  # a plain left-to-right step through the same cache
            _causal_step(net, store, x, gen, p, active, controls, sampling)
            sizer.fade_round()
            if stop_id is not None:
                stopped |= active & gen[:, p] & (x[:, p] == stop_id)
            rounds, committed, p = rounds + 1, committed + 1, p + 1
            continue
        k, span, cols, ends, decide, drafted, waiting = _window(gen, active, given, per_row, p)
        q_logits = None  # nothing to draft (a plain causal step, or only carried tokens): no masked pass
        if bool(drafted.any()):
            q_logits = _draft(net, store, x, gen, p, k, drafted, draft_shift, controls, sampling)
            draft_rounds += 1
        drafts = x[:, p:p + k].clone()
        # verify: one causal pass over the last cached token, the carried tokens and the drafts
        net.record(x)
        hidden = store.feed(x[:, p - 1:p + k], torch.arange(p, p + k + 1))
        p_raw = net.ban(net.model.predict(hidden).float())  # [B, k+1, V]: predicts columns p..p+k
        p_logits = torch.stack([_controls(net, p_raw[:, i], x, p + i, gen) if p + i < W else p_raw[:, i]
                                for i in range(k + 1)], 1) if controls else p_raw
        accepted, token = accept_round(p_logits, p_logits[:, :k] if q_logits is None else q_logits, drafts,
                                       decide, temperature, top_k, top_p, generator, ends)
        if sizer is not None:
            sizer.observe((cols[None, :k] - given[:, None])[drafted], (accepted[:, None] >= cols[None, :k])[drafted],
                          (accepted[:, None] > cols[None, :k])[drafted])
        # each active row keeps its accepted columns and the correction (or the draw at its end) after them
        keep = torch.where(active, (accepted + 1).clamp(max=W - p), torch.zeros_like(accepted))  # [B]
        keep = torch.where(waiting, given, keep)
        fix = active & (p + accepted < W)
        at = (p + accepted).clamp(max=W - 1)
        x[fix, at[fix]] = torch.where(decide[fix, accepted[fix]], token[fix], x[fix, at[fix]])
        later = gen & active[:, None] & (torch.arange(W, device=x.device)[None, :] >= p + keep[:, None])
        x[later] = mask_id  # drafts past each row's kept columns
        if stop_id is not None:
            upto = cols[None, :span] < keep[:, None]
            stopped |= ((x[:, p:p + span] == stop_id) & gen[:, p:p + span] & upto).any(1)
        n = int(keep.masked_fill(~active, k + 1).min())  # the cache advances by the slowest active row
        carry = (keep - n).clamp_min(0)
        store.truncate(p + n - 1)
        rounds += 1
        drafting = active & drafted.any(1)  # [B]: rows that drafted this round
        accepted_sum += int((accepted - given)[drafting].clamp_min(0).sum())
        row_rounds += int(drafting.sum())
        carried += int(carry.sum())
        committed += n
        p += n
    return {"rounds": rounds, "mean_accepted": accepted_sum / max(row_rounds, 1),
            "tokens_per_round": committed / max(rounds, 1), "carried": carried, "draft_rounds": draft_rounds,
            "causal_steps": rounds - draft_rounds}
