"""What every strategy shares: the network wrapper, token choice, ranking.

``Network`` wraps a model for decoding: it runs ``encode`` + ``predict`` on a canvas ``[B, W]``, returns
float32 logits for the columns ``lo..W-1`` only (the generated region; the head never runs on the prompt),
bans the special tokens, counts its calls, and reads the prediction for token j at position ``j - shift``:
shift 1 for GPT-BERT-style models trained with ``mntp`` (or ``clm`` only), 0 for ``mlm``/``diffusion``.

Token choice (``choose``) is argmax at temperature 0 and a draw from softmax(filtered / temperature)
otherwise, after optional top-k and top-p filtering. A draw (``draw``) inverts the float64 cumulative
distribution with one uniform per row: float64 because low-precision sampling skews samples
(research/antlm_gmlm.md §C.4; LLaDA's ``generate.py`` uses float64 Gumbel-max for that reason). It is
the same distribution as float64 Gumbel-max, which needs a uniform and two logarithms per vocabulary
entry. The confidence of a choice is the model's own (untempered, unfiltered but special-token-free)
probability of it.

The repetition controls (``generation.repetition``) live here too, so every strategy gets them the same
way: ``Network`` applies the repetition penalty to every logit it returns (``adjust``), and strategies
write their choices through ``Network.write``, which enforces ``no_repeat_ngram_size``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from masklm.generation.repetition import apply_penalty, place_without_repeats

NEG_INF = float("-inf")


class Network:
    """A model in eval mode as a denoiser / next-token predictor.

    model:  has ``encode(ids [B, T], attention_mask, causal) -> [B, T, D]`` and ``predict([..., D]) -> [..., V]``.
    shift:  predictions for token j are read at position j - shift (0 or 1).
    banned: bool ``[V]``, tokens that are never emitted (their logits become -inf).
    trace:  keep a copy of every canvas the network is called on (``inputs``), for tests.
    repetition_penalty, no_repeat_ngram_size, mask_id: the repetition controls (module docstring); the
            n-gram rule needs ``mask_id`` to tell undecided positions.
    """

    def __init__(self, model: torch.nn.Module, shift: int, banned: torch.Tensor, trace: bool = False,
                 repetition_penalty: float | None = None, no_repeat_ngram_size: int | None = None,
                 mask_id: int | None = None) -> None:
        self.model = model
        self.shift = shift
        self.banned = banned
        self.penalty = repetition_penalty if repetition_penalty not in (None, 1.0) else None
        self.no_repeat = no_repeat_ngram_size
        self.mask_id = mask_id
        self.calls = 0
        self.rows = 0  # sum of batch sizes over calls (a length beam of l grows it l-fold)
        self.trace = trace
        self.inputs: list[torch.Tensor] = []

    def record(self, x: torch.Tensor) -> None:
        self.calls += 1
        self.rows += x.shape[0]
        if self.trace:
            self.inputs.append(x.detach().clone())

    def logits(self, x: torch.Tensor, attention_mask: torch.Tensor | None, lo: int) -> torch.Tensor:
        """Bidirectional pass over x ``[B, W]`` -> logits ``[B, W - lo, V]`` for tokens at columns lo..W-1."""
        if lo < self.shift:
            raise ValueError("the first generated column must leave room for the shifted read")
        self.record(x)
        hidden = self.model.encode(x, attention_mask=attention_mask)  # [B, W, D]
        W = x.shape[1]
        return self.adjust(self.ban(self.model.predict(hidden[:, lo - self.shift:W - self.shift]).float()), x)

    def causal_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Uncached causal pass over x ``[B, p]`` -> logits ``[B, V]`` for the token at column p."""
        self.record(x)
        hidden = self.model.encode(x, causal=True)  # [B, p, D]
        return self.adjust(self.ban(self.model.predict(hidden[:, -1]).float()), x)

    def ban(self, logits: torch.Tensor) -> torch.Tensor:
        """Set the banned tokens' logits ``[..., V]`` to -inf (in place)."""
        logits[..., self.banned] = NEG_INF
        return logits

    def adjust(self, logits: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The repetition penalty (if any), in place: logits ``[B, ..., V]`` of positions in rows whose tokens
        are ``context`` ``[B, W]`` (the canvas; undecided positions hold [MASK], which is banned anyway)."""
        return apply_penalty(logits, context, self.penalty) if self.penalty else logits

    def write(self, ids_full: torch.Tensor, where: torch.Tensor, ids: torch.Tensor, logits: torch.Tensor,
              pick: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """``ids_full[where] = ids`` (canvas ``[B, W]``, where ``[B, W]`` bool, ids ``[M]`` row-major); with
        ``no_repeat_ngram_size`` the positions are placed left to right and a token that would repeat an
        n-gram is redrawn by ``pick`` from its logits (``[M, V]``, one row each) -> the ids written."""
        if not self.no_repeat:
            ids_full[where] = ids
            return ids
        known = ids_full != self.mask_id
        return place_without_repeats(ids_full, known, where, ids, logits, self.no_repeat, pick)

    def choose_and_write(self, ids_full: torch.Tensor, where: torch.Tensor, logits: torch.Tensor,
                         temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``choose`` a token for each position of ``where`` (``[B, W]`` bool over the canvas ``ids_full``)
        from its logits ``[M, V]`` and ``write`` it -> (ids ``[M]``, their log-probabilities ``[M]``)."""
        def pick(lg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return choose(lg, temperature, top_k, top_p, generator)

        ids, logp = pick(logits)
        written = self.write(ids_full, where, ids, logits, pick)
        if written is not ids:  # a token was redrawn: its own log-probability
            logp = torch.log_softmax(logits, -1).gather(1, written[:, None]).squeeze(1)
        return written, logp


def widen(where: torch.Tensor, lo: int) -> torch.Tensor:
    """A mask over canvas columns ``lo..W-1`` ``[B, G]`` -> the same mask over all columns ``[B, lo + G]``."""
    return torch.cat([torch.zeros(where.shape[0], lo, dtype=torch.bool, device=where.device), where], 1)


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Keep the top-k tokens and the smallest set whose probability reaches top_p; others -> -inf.

    logits ``[M, V]`` -> ``[M, V]`` (a new tensor). The most probable token always survives.
    """
    out = logits.clone()
    if top_k is not None and top_k < out.shape[-1]:
        kth = out.topk(top_k, dim=-1).values[:, -1:]  # [M, 1]
        out[out < kth] = NEG_INF
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = out.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # mass before this token already reaches top_p
        drop[:, 0] = False
        out.scatter_(1, order, sorted_logits.masked_fill(drop, NEG_INF))
    return out


def gumbel(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard Gumbel noise, float64, ``shape`` (MaskGIT's noise on confidence rankings)."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
    exponential = -torch.log(u.clamp_min(1e-300))  # Exp(1), > 0
    return -torch.log(exponential.clamp_min(1e-300))


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One sample per row from probs ``[M, V]`` (float64, >= 0, each row summing to > 0, not necessarily
    to 1) -> ids ``[M]``: the first index whose cumulative probability exceeds u x total, u ~ U[0, 1).
    A zero-probability token is never drawn."""
    cdf = probs.cumsum(-1)  # [M, V]
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=generator, dtype=torch.float64, device=probs.device) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # u x total may round up to total
    return torch.searchsorted(cdf, u, right=True).squeeze(1)


def scaled_scores(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """What ``choose`` samples from, as scores: logits ``[M, V]`` -> filtered logits / temperature (the same
    dtype; a sample is softmax of these)."""
    if top_k is not None or top_p is not None:
        logits = filter_logits(logits, top_k, top_p)
    return logits if temperature == 1.0 else logits / temperature


def choose(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row: logits ``[M, V]`` -> (ids ``[M]``, model log-probability of each ``[M]``).

    temperature 0: argmax (top-k/top-p do not change it). Otherwise a float64 ``draw`` from
    softmax(filtered / temperature).
    """
    if logits.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=logits.device), logits.new_zeros(0)
    if temperature == 0.0:
        ids = logits.argmax(-1)
    else:
        ids = draw(torch.softmax(scaled_scores(logits, temperature, top_k, top_p).double(), -1), generator)
    # the model's log-probability (specials banned): log_softmax(logits)[ids], without the [M, V] tensor
    return ids, logits.gather(1, ids[:, None]).squeeze(1) - torch.logsumexp(logits, -1)


def ranks(scores: torch.Tensor, descending: bool) -> torch.Tensor:
    """Rank of every entry within its row: scores ``[B, G]`` -> long ``[B, G]`` (0 = first; ties by column)."""
    order = scores.argsort(dim=1, descending=descending, stable=True)
    out = torch.empty_like(order)
    out.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order).contiguous())
    return out


def cosine_ratio(r: float) -> float:
    """MaskGIT's mask ratio gamma(r) = cos(pi r / 2), clipped to [1e-6, 1]."""
    return min(1.0, max(1e-6, math.cos(math.pi * r / 2)))
