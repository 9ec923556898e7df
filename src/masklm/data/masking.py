"""BERT-style masking: token-level, whole-word or span, deterministic per (seed, epoch, row).

Every row draws its random numbers from its own counter-based generator
(``Philox(key=hash(seed, epoch, row))``), so a row is masked the same way whatever other rows share
its batch, on any number of loader workers. Within a batch all the work is vectorized.

Selection picks a budget of ``rate * n`` maskable tokens per row (n = non-special, non-pad tokens),
dithered so the expected count is exact even for short rows. Token-level masking treats every
maskable token as a one-token word; whole-word masking groups tokens into words from
``word_starts`` (``masklm.tokenizer.word_starts``: in scripts written without spaces, such as Chinese or
Thai, each character, or each token spanning several, is a word, so a sentence is not one word). Words are taken in a random order while their running length stays within the
budget (the word straddling the budget is taken with probability equal to the fraction that fits),
so a word is masked as a whole or not at all. The mask/random/keep split (default 80/10/10) is then
drawn per token, like Hugging Face's whole-word collator.

Span masking is LTG-BERT's BabyLM ``SpanMaskingStrategy`` (research/ltg_bert.md §5.3): a target
n ~ Binomial(n_maskable, rate), n >= 1, then spans of length Geometric(1/3) mod 10 at uniform offsets
until at least n tokens are marked (at most 100 spans, so the count may overshoot n). Each span draws
one mask/random/keep decision for all its tokens (where spans overlap, the later span's decision
wins, as in the reference); the last position of a row is never marked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch

from masklm.errors import ConfigError

IGNORE_INDEX = -100
STRATEGIES = ("token", "whole-word", "span")

# LTG-BERT's span recipe: length Geometric(SPAN_P) mod SPAN_MODULO (0 = a wasted draw), at most
# SPAN_MAX_SPANS draws per row (the reference's iteration cap).
SPAN_P = 1.0 / 3.0
SPAN_MODULO = 10
SPAN_MAX_SPANS = 100
_SPAN_CHUNK = 16  # spans replayed per vectorised pass in select_spans


def row_generator(seed: int, epoch: int, row: int) -> np.random.Generator:
    """The random generator of one row: a Philox stream keyed by a hash of (seed, epoch, row)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{row}".encode(), digest_size=16).digest()
    return np.random.Generator(np.random.Philox(key=int.from_bytes(digest, "little")))


@lru_cache(maxsize=16)
def _replacement_ids(vocab_size: int, special_ids: tuple[int, ...]) -> np.ndarray:
    allowed = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), np.asarray(special_ids, dtype=np.int64))
    if len(allowed) == 0:
        raise ConfigError("every id in the vocabulary is special; random replacement has nothing to draw from")
    return allowed


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    rows: Sequence[int],
    seed: int,
    epoch: int,
    rate: float = 0.15,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    mask_id: int,
    vocab_size: int,
    special_ids: Sequence[int],
    attention_mask: torch.Tensor | None = None,
    word_starts: torch.Tensor | None = None,
    strategy: str = "token",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask a batch -> (inputs [B, T] long, labels [B, T] long with -100 where not predicted).

    ``input_ids`` [B, T]; ``rows`` [B]: the global row number of each batch row (the random key);
    ``attention_mask`` [B, T] (0 = pad, never chosen); ``word_starts`` [B, T] bool, needed for
    whole-word masking. ``strategy`` is "token", "whole-word" or "span". Special tokens are never
    chosen and random replacements are never special.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown masking strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"mask rate must be in [0, 1] (got {rate})")
    if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1.0) > 1e-6:
        raise ConfigError(f"mask split must be three non-negative numbers summing to 1 (got {tuple(split)})")
    if strategy == "whole-word" and word_starts is None:
        raise ConfigError("whole-word masking needs word_starts (from PackedRows.batch)")
    device = input_ids.device
    ids = input_ids.detach().cpu().numpy().astype(np.int64, copy=False)
    B, T = ids.shape
    if len(rows) != B:
        raise ConfigError(f"rows has {len(rows)} entries for a batch of {B}")

    specials = tuple(sorted({int(s) for s in special_ids}))
    allowed = _replacement_ids(int(vocab_size), specials)
    maskable = ~np.isin(ids, specials)
    if attention_mask is not None:
        maskable &= attention_mask.detach().cpu().numpy().astype(bool)

    if strategy == "span":
        sel = select_spans(maskable, rows=rows, seed=seed, epoch=epoch, rate=rate, split=split,
                           n_replacements=len(allowed))
        chosen, to_mask, to_random, picks = sel.chosen, sel.to_mask, sel.to_random, sel.picks
    else:
        starts = None if word_starts is None else word_starts.detach().cpu().numpy().astype(bool)
        chosen, to_mask, to_random, picks = _select_words(
            maskable, starts if strategy == "whole-word" else None, rows=rows, seed=seed, epoch=epoch,
            rate=rate, split=split, n_replacements=len(allowed))

    inputs = np.where(to_mask, mask_id, ids)
    inputs = np.where(to_random, allowed[picks], inputs)
    labels = np.where(chosen, ids, IGNORE_INDEX)
    return torch.from_numpy(inputs).to(device), torch.from_numpy(labels).to(device)


def _select_words(
    maskable: np.ndarray, word_starts: np.ndarray | None, *, rows: Sequence[int], seed: int, epoch: int,
    rate: float, split: Sequence[float], n_replacements: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Token-level (``word_starts`` None) or whole-word selection -> (chosen, to_mask, to_random, picks),
    all [B, T]; ``picks`` indexes the allowed replacement ids."""
    B, T = maskable.shape
    # Per-row draws: [0] selection priority, [1] split, [2] dither; plus replacement indices.
    uniforms = np.empty((B, 3, T))
    picks = np.empty((B, T), dtype=np.int64)
    for b, row in enumerate(rows):
        rng = row_generator(seed, epoch, int(row))
        uniforms[b] = rng.random((3, T))
        picks[b] = rng.integers(0, n_replacements, T)
    priority, split_u, dither = uniforms[:, 0], uniforms[:, 1], uniforms[:, 2, :1]  # dither [B, 1]

    # Group maskable tokens into words [B, T] -> word index per token (token level: one per token).
    if word_starts is not None:
        starts = word_starts & maskable
        prev = np.zeros_like(maskable)
        prev[:, 1:] = maskable[:, :-1]
        starts |= maskable & ~prev  # a row may begin mid-word; the first maskable token opens a word
    else:
        starts = maskable
    word = np.cumsum(starts, axis=1) - 1  # [B, T]; -1 before the first word
    word_len = np.zeros((B, T + 1), dtype=np.int64)
    flat = np.where(maskable, word, T) + (T + 1) * np.arange(B)[:, None]
    np.add.at(word_len.reshape(-1), flat.reshape(-1), 1)
    word_len = word_len[:, :T]  # [B, W<=T] tokens per word (0 past the last word)

    # Visit words in random priority order; take each while the running length fits the budget.
    word_priority = np.where(word_len > 0, priority, np.inf)  # priority[b, w] ranks word w
    order = np.argsort(word_priority, axis=1, kind="stable")
    sorted_len = np.take_along_axis(word_len, order, axis=1)
    before = np.cumsum(sorted_len, axis=1) - sorted_len
    budget = rate * maskable.sum(axis=1, keepdims=True)
    take_sorted = (sorted_len > 0) & (before + dither * sorted_len < budget)
    take_word = np.zeros((B, T), dtype=bool)
    np.put_along_axis(take_word, order, take_sorted, axis=1)
    chosen = maskable & np.take_along_axis(take_word, np.maximum(word, 0), axis=1)

    to_mask = chosen & (split_u < split[0])
    to_random = chosen & (split_u >= split[0]) & (split_u < split[0] + split[1])
    return chosen, to_mask, to_random, picks


# ---- span masking (LTG-BERT) -------------------------------------------------------------------


class SpanSelection(NamedTuple):
    """What :func:`select_spans` decided, all [B, T] except ``spans_used`` [B]."""

    chosen: np.ndarray     # bool: predicted positions
    to_mask: np.ndarray    # bool: chosen and replaced by [MASK]
    to_random: np.ndarray  # bool: chosen and replaced by a random id
    picks: np.ndarray      # int: index into the allowed replacement ids
    owner: np.ndarray      # int: the span whose decision a chosen position took (-1 where not chosen)
    spans_used: np.ndarray  # int: how many span draws the row took (<= SPAN_MAX_SPANS)


def sample_span_lengths(rng: np.random.Generator, size: int | tuple[int, ...], p: float = SPAN_P,
                        modulo: int = SPAN_MODULO) -> np.ndarray:
    """Span lengths Geometric(p) mod ``modulo`` (support 0..modulo-1; 0 is a draw that marks nothing).

    numpy's geometric counts trials (support 1, 2, ...), like torch's ``geometric_`` in the reference.
    """
    return rng.geometric(p, size) % modulo


def select_spans(
    maskable: np.ndarray, *, rows: Sequence[int], seed: int, epoch: int, rate: float,
    split: Sequence[float], n_replacements: int,
) -> SpanSelection:
    """LTG-BERT span selection over ``maskable`` [B, T] bool, one Philox stream per row.

    The reference draws spans one at a time until the target is reached. Here every row draws all
    ``SPAN_MAX_SPANS`` candidate spans up front (so its stream does not depend on how many are used)
    and replays the loop vectorised; the result equals the sequential loop's on the same draws.
    """
    B, T = maskable.shape
    K = SPAN_MAX_SPANS
    n_maskable = maskable.sum(axis=1)
    target = np.empty(B, dtype=np.int64)
    lengths = np.empty((B, K), dtype=np.int64)
    uniforms = np.empty((B, 2, K))  # [0] offset, [1] mask/random/keep decision, one per span
    picks = np.empty((B, T), dtype=np.int64)
    for b, row in enumerate(rows):
        rng = row_generator(seed, epoch, int(row))
        target[b] = rng.binomial(int(n_maskable[b]), rate)
        lengths[b] = sample_span_lengths(rng, K)
        uniforms[b] = rng.random((2, K))
        picks[b] = rng.integers(0, n_replacements, T)
    target = np.minimum(n_maskable, np.maximum(1, target))  # at least one, never more than there are

    # Offset uniform over the T + 2l - 1 integers of [-(l-1), T+l), so spans may hang off either end.
    offsets = np.floor(uniforms[:, 0] * (T + 2 * lengths - 1)).astype(np.int64) - (lengths - 1)
    begin = np.maximum(0, offsets)
    end = np.minimum(T - 1, offsets + lengths)  # the reference never marks position T-1

    # Replay the reference's sequential loop a chunk of spans at a time over the rows still short of
    # their target; most rows finish within the first chunk or two, so the [rows, chunk, T] cover
    # cube stays small. first[b, t] is the first span marking t (K if none) and owner[b, t] the last
    # used one: the reference writes spans in order, so where spans overlap the last decision wins.
    pos = np.arange(T)
    first = np.full((B, T), K, dtype=np.int64)
    owner = np.full((B, T), -1, dtype=np.int64)
    count = np.zeros(B, dtype=np.int64)
    spans_used = np.full(B, K, dtype=np.int64)
    spans_used[target <= 0] = 0
    active = np.flatnonzero(target > 0)
    for c0 in range(0, K, _SPAN_CHUNK):
        if len(active) == 0:
            break
        ks = np.arange(c0, min(K, c0 + _SPAN_CHUNK))
        cover = ((pos >= begin[active][:, ks, None]) & (pos < end[active][:, ks, None])
                 & maskable[active][:, None, :])  # [A, C, T]: span k marks position t
        first_a = np.minimum(first[active], np.where(cover.any(axis=1), c0 + cover.argmax(axis=1), K))
        marked = count[active][:, None] + np.cumsum(
            (first_a[:, None, :] == ks[:, None]).sum(axis=2), axis=1)  # [A, C]: marked after span k
        reached = marked >= target[active][:, None]
        hit = reached.any(axis=1)
        stop = np.where(hit, c0 + reached.argmax(axis=1) + 1, ks[-1] + 1)  # spans used so far
        used_cover = cover & (ks[None, :, None] < stop[:, None, None])
        last = np.where(used_cover.any(axis=1), ks[-1] - used_cover[:, ::-1].argmax(axis=1), -1)
        owner[active] = np.where(last >= 0, last, owner[active])
        first[active] = first_a
        count[active] = marked[:, -1]
        spans_used[active[hit]] = stop[hit]
        active = active[~hit]
    chosen = first < spans_used[:, None]
    owner = np.where(chosen, owner, -1)

    decision = np.take_along_axis(uniforms[:, 1], np.maximum(owner, 0), axis=1)
    to_mask = chosen & (decision < split[0])
    to_random = chosen & (decision >= split[0]) & (decision < split[0] + split[1])
    return SpanSelection(chosen, to_mask, to_random, picks, owner, spans_used)
