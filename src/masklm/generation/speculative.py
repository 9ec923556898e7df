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
row and round, carried tokens not counted), ``tokens_per_round`` (the cache's advance per round) and
``carried`` (tokens kept ahead of the slowest row, summed over rows and rounds).
"""

from __future__ import annotations

import torch

from masklm.generation.canvas import Canvas
from masklm.generation.kv_cache import WindowCache
from masklm.generation.repetition import banned_tokens
from masklm.generation.sampling import NEG_INF, Network, draw, filter_logits


def _scaled(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """What ``sampling.choose`` samples from, as scores: logits ``[M, V]`` -> filtered logits / temperature."""
    if top_k is not None or top_p is not None:
        logits = filter_logits(logits, top_k, top_p)
    return logits if temperature == 1.0 else logits / temperature


def accept_round(p_logits: torch.Tensor, q_logits: torch.Tensor, drafts: torch.Tensor, decide: torch.Tensor,
                 temperature: float, top_k: int | None, top_p: float | None,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Verify one round. p_logits ``[B, k+1, V]`` (causal, the last one after every draft), q_logits
    ``[B, k, V]`` (masked mode, what the drafts were drawn from), drafts ``[B, k]``, decide ``[B, k+1]``
    bool (positions the rule applies to; others hold given tokens and are kept) -> (accepted drafts per row
    ``[B]`` long in 0..k, the token after them ``[B]``: correction or bonus).

    Sampling reads p and q at the drafts through each row's log-normaliser, and builds whole float64
    distributions only for the one position per row where the round ends (the residual or the bonus)."""
    B, k = drafts.shape
    if temperature == 0.0:
        target = p_logits.argmax(-1)  # [B, k+1]
        ok = (drafts == target[:, :k]) | ~decide[:, :k]
    else:
        sp = _scaled(p_logits.flatten(0, 1), temperature, top_k, top_p).view(B, k + 1, -1)
        sq = _scaled(q_logits.flatten(0, 1), temperature, top_k, top_p).view(B, k, -1)
        at = drafts[..., None]
        pd = (sp[:, :k].gather(2, at).squeeze(2) - torch.logsumexp(sp[:, :k], -1)).double().exp()  # [B, k]
        qd = (sq.gather(2, at).squeeze(2) - torch.logsumexp(sq, -1)).double().exp()
        u = torch.rand(B, k, generator=generator, dtype=torch.float64, device=drafts.device)
        ok = (u * qd <= pd) | ~decide[:, :k]  # u < min(1, p/q), with q > 0 for a drawn token
    bad = (~ok).long()
    accepted = torch.where(bad.any(1), bad.argmax(1), torch.full_like(bad[:, 0], k))  # [B]
    rows = torch.arange(B, device=drafts.device)
    if temperature == 0.0:
        return accepted, target[rows, accepted]
    after = torch.softmax(sp[rows, accepted].double(), -1)  # [B, V]: the bonus distribution, or p where rejected
    rejected = accepted < k
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


@torch.no_grad()
def speculative_decode(net: Network, canvas: Canvas, mask_id: int, draft_length: int = 4,
                       temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                       generator: torch.Generator | None = None, stop_id: int | None = None,
                       draft_shift: int = 1) -> dict:
    """Decode ``canvas`` in place -> stats ``{rounds, mean_accepted, tokens_per_round, carried}``. ``draft_shift``:
    where the masked reading predicts a mask at column j (j - 1 after ``mntp``, j after ``mlm``: AntLM)."""
    x, gen = canvas.ids, canvas.gen  # [B, W]
    B, W = x.shape
    lo = canvas.lo
    x[gen] = mask_id
    store = WindowCache(net.model, canvas.attention.bool())
    if lo > 1:  # the prompt, causally: the cache holds columns 0 .. p-2 before each round
        net.record(x)  # traces hold the whole canvas before each call
        store.feed(x[:, :lo - 1], torch.arange(1, lo))
    controls = bool(net.penalty or net.no_repeat)
    stopped = torch.zeros(B, dtype=torch.bool, device=x.device)
    carry = torch.zeros(B, dtype=torch.long, device=x.device)  # kept tokens of each row at p, p+1, ...
    remaining = gen.flip(1).cumsum(1).flip(1)  # [B, W]: generated positions at or after each column
    p, rounds, accepted_sum, row_rounds, committed, carried = lo, 0, 0, 0, 0, 0
    while p < W:
        active = ~stopped & (remaining[:, p] > 0)
        if not active.any():
            break
        k = min(draft_length, W - p)
        given = carry  # [B]: columns p .. p+given-1 of each row were kept last round
        cols = torch.arange(k + 1, device=x.device)
        decide = torch.zeros(B, k + 1, dtype=torch.bool, device=x.device)
        decide[:, :k] = gen[:, p:p + k] & active[:, None] & (cols[None, :k] >= given[:, None])
        if p + k < W:
            decide[:, k] = gen[:, p + k] & active
        # draft: the last cached token, the carried tokens and masks for the rest, bidirectionally
        net.record(x)
        hidden = store.feed(x[:, p - 1:p + k], torch.full((k + 1,), p + k))
        store.truncate(p - 1)
        d = 1 - draft_shift  # window row of column p's prediction
        q_raw = net.ban(net.model.predict(hidden[:, d:d + k]).float())  # [B, k, V]: predicts columns p..p+k-1
        if controls:
            q_logits = torch.empty_like(q_raw)
            for i in range(k):  # drafts left to right, so the repetition controls see the earlier drafts
                q_logits[:, i] = _controls(net, q_raw[:, i], x, p + i, gen)
                where = torch.zeros_like(gen)
                where[:, p + i] = decide[:, i]
                net.choose_and_write(x, where, q_logits[decide[:, i], i], temperature, top_k, top_p, generator)
        else:  # no controls: every draft of the window in one draw (row-major, as the canvas is indexed)
            q_logits = q_raw
            where = torch.zeros_like(gen)
            where[:, p:p + k] = decide[:, :k]
            net.choose_and_write(x, where, q_raw[decide[:, :k]], temperature, top_k, top_p, generator)
        drafts = x[:, p:p + k].clone()
        # verify: one causal pass over the last cached token, the carried tokens and the drafts
        net.record(x)
        hidden = store.feed(x[:, p - 1:p + k], torch.arange(p, p + k + 1))
        p_raw = net.ban(net.model.predict(hidden).float())  # [B, k+1, V]: predicts columns p..p+k
        p_logits = torch.stack([_controls(net, p_raw[:, i], x, p + i, gen) if p + i < W else p_raw[:, i]
                                for i in range(k + 1)], 1) if controls else p_raw
        accepted, token = accept_round(p_logits, q_logits, drafts, decide, temperature, top_k, top_p, generator)
        # each active row keeps its accepted columns and the correction or bonus after them
        keep = torch.where(active, (accepted + 1).clamp(max=W - p), torch.zeros_like(accepted))  # [B]
        fix = active & (p + accepted < W)
        at = (p + accepted).clamp(max=W - 1)
        x[fix, at[fix]] = torch.where(decide[fix, accepted[fix]], token[fix], x[fix, at[fix]])
        later = gen & active[:, None] & (torch.arange(W, device=x.device)[None, :] >= p + keep[:, None])
        x[later] = mask_id  # drafts past each row's kept columns
        if stop_id is not None:
            span = min(k + 1, W - p)
            upto = cols[None, :span] < keep[:, None]
            stopped |= ((x[:, p:p + span] == stop_id) & gen[:, p:p + span] & upto).any(1)
        n = int(keep.masked_fill(~active, k + 1).min())  # the cache advances by the slowest active row
        carry = (keep - n).clamp_min(0)
        store.truncate(p + n - 1)
        rounds += 1
        accepted_sum += int((accepted - given)[active].clamp_min(0).sum())
        row_rounds += int(active.sum())
        carried += int(carry.sum())
        committed += n
        p += n
    return {"rounds": rounds, "mean_accepted": accepted_sum / max(row_rounds, 1),
            "tokens_per_round": committed / max(rounds, 1), "carried": carried}
