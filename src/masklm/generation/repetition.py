"""Repetition controls usable by every strategy: ``repetition_penalty`` and ``no_repeat_ngram_size``.

Both follow Hugging Face's ``generate`` (``RepetitionPenaltyLogitsProcessor``,
``NoRepeatNGramLogitsProcessor``; the penalty is CTRL's, Keskar et al. 2019):

- ``repetition_penalty`` r > 0: the logit of every token already in the row (prompt or generated, on
  either side of the position) is divided by r when positive and multiplied by r when negative, so r > 1
  makes repeats less likely. It is applied to the logits before temperature and top-k/top-p, in every
  strategy, and (for the speculative strategy) to the draft and the verifier alike.
- ``no_repeat_ngram_size`` n: no n-gram of the row may occur twice once a generated token is in it. Left to
  right that is HF's rule (ban the tokens that would complete an n-gram seen before); the parallel
  strategies write several positions per call, some with known tokens on their right, so the positions a
  call writes are placed one at a time, left to right, and each gets its chosen token unless that token
  would complete an n-gram equal to another complete n-gram of the row (on either side), in which case it is
  redrawn from its logits with those tokens banned. Every n-gram that holds a generated token is therefore
  unique in the row when decoding ends (the prompt's own n-grams may repeat: they are given).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

NEG_INF = float("-inf")


def apply_penalty(logits: torch.Tensor, context: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF's repetition penalty, in place: logits ``[B, ..., V]``, context ``[B, W]`` (the tokens each row
    holds; specials, [MASK] and padding included: they are banned anyway) -> logits."""
    present = torch.zeros(context.shape[0], logits.shape[-1], dtype=torch.bool, device=logits.device)
    present.scatter_(1, context.clamp(0, logits.shape[-1] - 1), True)  # [B, V]
    present = present.view(present.shape[0], *([1] * (logits.dim() - 2)), present.shape[1])
    scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
    logits.copy_(torch.where(present, scaled, logits))
    return logits


def banned_tokens(row: list[int], known: list[bool], col: int, n: int) -> set[int]:
    """Tokens that, placed at ``col`` (unknown now), would make an n-gram equal to a complete n-gram
    elsewhere in ``row`` (only windows of known tokens count)."""
    L = len(row)
    complete = {tuple(row[s:s + n]) for s in range(L - n + 1) if all(known[s:s + n])}
    starts = [s for s in range(max(0, col - n + 1), min(col, L - n) + 1)
              if all(known[j] for j in range(s, s + n) if j != col)]  # windows the token would complete
    out: set[int] = set()
    for s in starts:
        others = [j for j in range(s, s + n) if j != col]
        for gram in complete:
            if all(gram[j - s] == row[j] for j in others):
                out.add(gram[col - s])
    if len(starts) > 1:  # two windows it completes may equal each other (a run such as "a a a a")
        near = {row[j] for s in starts for j in range(s, s + n) if j != col}
        for token in near - out:
            grams = [tuple(token if j == col else row[j] for j in range(s, s + n)) for s in starts]
            if len(set(grams)) < len(grams):
                out.add(token)
    return out


def place_without_repeats(ids_full: torch.Tensor, known: torch.Tensor, where: torch.Tensor, ids: torch.Tensor,
                          logits: torch.Tensor, n: int,
                          pick: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
                          ) -> torch.Tensor:
    """Write ``ids`` ``[M]`` at ``where`` (``[B, W]`` bool, row-major order) into ``ids_full`` ``[B, W]``,
    one position at a time from the left, redrawing (``pick`` on the position's logits ``[1, V]`` with the
    offending tokens at -inf) any token that would repeat an n-gram. ``known`` ``[B, W]`` bool marks the
    tokens already decided (updated in place). -> the ids written ``[M]``."""
    out = ids.clone()
    rows, cols = where.nonzero(as_tuple=True)
    table = ids_full.tolist()
    known_rows = known.tolist()
    for m, (b, c) in enumerate(zip(rows.tolist(), cols.tolist())):
        token = int(out[m])
        ban = banned_tokens(table[b], known_rows[b], c, n)
        if token in ban:
            lg = logits[m:m + 1].clone()
            lg[0, sorted(ban)] = NEG_INF
            if bool(torch.isinf(lg).all()):
                raise RuntimeError("no token is left that does not repeat an n-gram")  # needs a vocabulary < n-grams
            token = int(pick(lg)[0][0])
            out[m] = token
        table[b][c] = token
        known_rows[b][c] = True
    ids_full[where] = out
    known[where] = True
    return out
