"""Model inputs from texts: encode with the length check, pad, and cut into token-budget batches.

One owner for the plumbing that fill-mask, scoring, embeddings, fine-tuning, generation, the server and
``import-ltg``'s reading check share:

- **Length check.** Nothing is ever truncated: a text longer than the limit (the model's, ``max_input_length``,
  or the server's ``--max-tokens``) is an error that names it and its length. The message is written
  once, in ``too_long``.
- **Padding.** Rows are right-padded to the longest; the attention mask is 1 on real tokens. An all-ones
  mask is passed as None (``mask_or_none``): SDPA then takes its mask-free kernels.
- **Windows.** Readers that can (fine-tuning, ``predict``, embeddings, question answering) read an input
  of any length, when asked, as overlapping windows (``WindowSpec``, ``window_rows``; see below).
- **Token-budget batches.** Rows sorted longest first are cut into batches of at most ``batch_tokens``
  tokens (rows x the first row's width), so short rows share batches and equal lengths need no padding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from tokenizers import Encoding

from masklm.errors import InputError

# Tokens per forward batch (rows x width). On CPU the scorer is compute-bound and smaller batches stay
# in cache (1k-4k measured best, 8k ~7% slower); on a GPU larger batches amortise kernel launches
# (benchmarks/score_speed.py on an H200: 65k tokens 1.7x faster than 8k).
DEFAULT_BATCH_TOKENS = {"cpu": 4096, "cuda": 65536}


def max_input_length(config, tokenizer) -> int:
    """The longest input a model reads in one piece. A BERT's absolute positions past the rows it was
    trained on were never trained, so it stops at its tokenizer's ``model_max_length`` (the trainer saves
    the longest rows the model read there; Hugging Face's tokenizer truncates there too); LTG-BERT and
    GPT-BERT read relative positions, up to ``max_position_embeddings``."""
    if getattr(config, "arch", "bert") == "bert":
        return min(config.max_position_embeddings, tokenizer.model_max_length)
    return config.max_position_embeddings


def default_batch_tokens(device: torch.device) -> int:
    return DEFAULT_BATCH_TOKENS.get(device.type, DEFAULT_BATCH_TOKENS["cuda"])


def resolve_batch_tokens(batch_tokens: int | None, device: torch.device) -> int:
    """``batch_tokens``, or the default for ``device`` when None; InputError below 1."""
    batch_tokens = default_batch_tokens(device) if batch_tokens is None else batch_tokens
    if batch_tokens < 1:
        raise InputError(f"batch_tokens must be >= 1, got {batch_tokens}")
    return batch_tokens


def too_long(what: str, n: int, limit: int, whose: str = "the model's maximum",
             fix: str = "shorten or split it") -> str:
    """The one "input too long" message: ``what`` (e.g. ``input 3``) has ``n`` tokens, over ``limit``."""
    return f"{what} is {n} tokens long, more than {whose} of {limit} tokens; {fix} (nothing is truncated)"


def check_length(n: int, limit: int, what: str, whose: str = "the model's maximum",
                 fix: str = "shorten or split it", error: Callable[[str], Exception] = InputError) -> None:
    """Raise ``error(too_long(...))`` when ``n`` tokens are more than ``limit``."""
    if n > limit:
        raise error(too_long(what, n, limit, whose, fix))


def check_strings(texts: Sequence[object], what: str = "input") -> None:
    """InputError naming the first item of ``texts`` that is not a string."""
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"{what} {i} is {type(text).__name__}, not a string; pass text")


def encode(tokenizer, texts: Sequence[str], max_length: int, what: str = "input",
           fix: str = "shorten or split it") -> list[Encoding]:
    """Encodings of ``texts`` with special tokens, in one batched call; InputError for a non-string or a
    text over ``max_length`` tokens (``what`` names the item, e.g. "sentence" -> "sentence 3"; ``fix``
    says what to do about it)."""
    check_strings(texts, what)
    encodings = tokenizer.encode_batch(list(texts))
    for i, enc in enumerate(encodings):
        check_length(len(enc.ids), max_length, f"{what} {i}", fix=fix)
    return encodings


# What a reader that can window says to do about an input over the maximum.
WINDOWS_FIX = "shorten it, or read it in overlapping windows (--windows, or windows=True)"


def pad(rows: Sequence[Sequence[int]], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``rows`` with ``fill`` -> ``(values [B, T] long, attention mask [B, T] long)``, T the
    longest row (``fill`` is the pad id for token rows, -100 for label rows)."""
    width = max(len(row) for row in rows)
    values = torch.tensor([list(row) + [fill] * (width - len(row)) for row in rows], dtype=torch.long)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], dtype=torch.long)
    return values, mask


def mask_or_none(attention_mask: torch.Tensor, device: torch.device | None = None) -> torch.Tensor | None:
    """``attention_mask`` ``[B, T]`` (moved to ``device`` when given), or None when no row is padded: an
    all-ones mask would only slow attention down (SDPA's mask-free kernels)."""
    if bool(attention_mask.all()):
        return None
    return attention_mask if device is None else attention_mask.to(device)


def longest_first(lengths: Sequence[int]) -> list[int]:
    """Indices of ``lengths`` ordered longest first; equal lengths keep their order."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def budget_cuts(sizes: Sequence[tuple[int, int]], batch_tokens: int) -> Iterator[tuple[int, int]]:
    """Cut items given as ``(rows, width)``, in their order, into ``[lo, hi)`` ranges whose rows x widest
    width stays within ``batch_tokens`` (at least one item per range, however large). The server cuts
    its waiting jobs this way, in arrival order; ``token_batches`` is the one-row-per-item case."""
    lo = rows = width = 0
    for i, (r, w) in enumerate(sizes):
        wide = max(width, w)
        if i > lo and (rows + r) * wide > batch_tokens:
            yield lo, i
            lo, rows, wide = i, 0, w
        rows += r
        width = wide
    if lo < len(sizes):
        yield lo, len(sizes)


def token_batches(widths: Sequence[int], batch_tokens: int) -> Iterator[tuple[int, int]]:
    """Cut rows sorted longest first (``widths`` ``[N]``) into ``[lo, hi)`` ranges of at most
    ``batch_tokens`` tokens each (at least one row, however long)."""
    return budget_cuts([(1, int(w)) for w in widths], batch_tokens)


# ---- sliding windows over inputs longer than the model's maximum ------------------------------------
#
# A window holds ``size`` content tokens (the model's maximum less the special and fixed tokens around
# it). ``stride`` is the OVERLAP between consecutive windows, in tokens, as in Hugging Face (the
# tokenizers' ``stride`` and the question-answering pipeline's ``doc_stride``); the step from one window's
# start to the next is ``size - stride``. The default overlap is a quarter of the window. The last window
# ends at the last token (it may overlap its neighbour by more), so every token is read and none is cut.

WINDOW_POOLS = ("mean", "max")


@dataclass(frozen=True)
class WindowSpec:
    """How inputs longer than a window are read: ``stride`` tokens shared by consecutive windows (None: a
    quarter of the window) and how sequence outputs of one input's windows are combined (``pool``:
    the elementwise ``mean`` or ``max`` of their logits or embeddings)."""

    stride: int | None = None
    pool: str = "mean"

    def __post_init__(self) -> None:
        if self.pool not in WINDOW_POOLS:
            raise InputError(f"unknown window pool {self.pool!r}; use {' or '.join(WINDOW_POOLS)}")
        if self.stride is not None and (not isinstance(self.stride, int) or self.stride < 0):
            raise InputError(f"stride must be a whole number of tokens >= 0, got {self.stride!r}")

    def overlap(self, size: int) -> int:
        """Tokens shared by consecutive windows of ``size`` content tokens; InputError unless < ``size``."""
        stride = size // 4 if self.stride is None else self.stride
        if stride >= size:
            raise InputError(f"stride {stride} must be smaller than the window of {size} tokens (the stride "
                             "is the overlap between consecutive windows)")
        return stride

    def as_dict(self) -> dict[str, object]:
        return {"stride": self.stride, "pool": self.pool}


def as_windows(windows: WindowSpec | dict | bool | None) -> WindowSpec | None:
    """``windows`` as a WindowSpec: True is the default one, False or None no windows (inputs over the
    maximum are refused), a dict the spec's fields (as stored in a fine-tuned folder)."""
    if windows is None or windows is False:
        return None
    if windows is True:
        return WindowSpec()
    if isinstance(windows, dict):
        return WindowSpec(stride=windows.get("stride"), pool=windows.get("pool", "mean"))
    if isinstance(windows, WindowSpec):
        return windows
    raise InputError(f"windows must be True, False or a WindowSpec, got {type(windows).__name__}")


def window_spans(n: int, size: int, stride: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each window of at most ``size`` over ``n`` tokens, consecutive windows sharing
    ``stride`` tokens (the last one ends at ``n``); one window when ``n <= size``."""
    if n <= size:
        return [(0, n)]
    starts = list(range(0, n - size, size - stride)) + [n - size]
    return [(a, a + size) for a in starts]


def central_windows(spans: Sequence[tuple[int, int]], n: int) -> list[int]:
    """For each of ``n`` tokens, the window (index into ``spans``) where it is most central: the one whose
    nearer edge is farthest from it (the earlier window on a tie)."""
    owner, best = [0] * n, [-1] * n
    for w, (a, b) in enumerate(spans):
        for p in range(a, b):
            margin = min(p - a, b - 1 - p)
            if margin > best[p]:
                owner[p], best[p] = w, margin
    return owner


def window_rows(content: Sequence[int], head: Sequence[int], tail: Sequence[int], max_length: int,
                spec: WindowSpec, what: str) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Rows ``head + content[a:b] + tail`` of at most ``max_length`` tokens over ``content`` -> (rows,
    spans ``(a, b)``). ``head``/``tail`` are the special (and fixed, e.g. a question) tokens every window
    repeats; InputError when they leave no room for content."""
    size = max_length - len(head) - len(tail)
    if size < 1:
        raise InputError(too_long(f"{what} (with the special tokens and anything every window repeats)",
                                  len(head) + len(tail), max_length - 1, fix="shorten it, so text fits beside it"))
    spans = window_spans(len(content), size, spec.overlap(size))
    return [list(head) + list(content[a:b]) + list(tail) for a, b in spans], spans


def pool_windows(values: torch.Tensor, how: str) -> torch.Tensor:
    """One input's window outputs ``[W, ...]`` -> ``[...]``: their elementwise mean or max."""
    return values.mean(0) if how == "mean" else values.amax(0)
