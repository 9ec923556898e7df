"""Attention masks, the attention core and dropout, shared by every architecture.

An objective asks a model for one of a few attention modes: bidirectional (the default), causal, and
block-diagonal over packed documents, each combined with key padding. ``build_attention_mask`` turns
those requests into the cheapest *exact* form (equal outputs at every real token, equal gradients):

- no mask at all when nothing is masked, or when every row holds one document and no padding (so SDPA
  can pick its fastest kernel; a mask takes it off the flash kernel on a GPU);
- ``is_causal=True`` for causal attention, also with padding at the end of rows: a real query attends
  only to earlier keys, which are all real;
- a broadcastable ``[B, 1, 1, T]`` key-padding mask for bidirectional attention with padding at the end;
- for rows that hold several documents, one of three document forms, picked per device by
  ``DOCUMENT_FORMS`` (the first that can run): ``flex`` (FlexAttention with a block mask built from a
  document ``mask_mod``; it skips fully masked blocks; CUDA only, no dropout, compiled once per process),
  ``split`` (each document run of each row attends as its own sequence, mask-free: sum of L_i^2 work
  instead of T^2, and no mask to read; it needs the runs on the host, so one copy of ``document_ids``),
  and ``dense`` (a ``[B, 1, T, T]`` bool mask: always possible, the fallback).

Without ``document_ids``, outputs at padding positions are unspecified (finite; nothing reads them).

Whether a row holds one document is decided on the data side where possible: ``PackedRows.batch`` knows
it from the numpy arrays it builds (``single_document``), and the trainer then does not pass
``document_ids`` at all, so a GPU never has to sync to find out (padding, at the end of the stream's last
row only, then takes the key-padding form). Other callers (held-out evaluation, user code) may pass
``document_ids`` for single-document rows without padding; on the CPU ``build_attention_mask`` checks that
cheaply (one comparison over ``[B, T]`` ints, free there); on a GPU it does not check (a device sync would
cost more than the document form saves) and takes the document form. With ``document_ids``, a padding
query attends to nothing and gives exactly 0 in every form (the split form leaves it out of every run).

The CPU default is ``dense``. ``split`` does less arithmetic (sum of L_i^2 instead of T^2, no mask traffic)
but pays one kernel call per document run, and measured 2.0-2.6x slower than ``dense`` for the attention
calls and 1.4-1.6x for a whole BERT step (``benchmarks/attention_forms.py``: 16 x 512, 4 documents per row,
forward and backward, 2-core CPU; docs/benchmarks.md). On CUDA ``flex`` comes first and ``dense`` is its
fallback; ``split`` stays available (``forms=``) for callers that measure it faster on their shapes.

A query row that may attend to nothing (e.g. a padding position whose document id matches no real key)
would make softmax divide by zero and turn into NaN, in the forward pass and in every gradient that
touches it. We let such rows attend everywhere (any finite result will do) and zero their output
afterwards with ``AttentionMask.keep_rows``.

On CPU, dropout is the slowest elementwise op of a training step: ``bernoulli_`` draws one 32-bit
number per element. ``dropout`` here uses 16 bits per element (four per 64-bit draw), with a keep
probability within 1/65536 of ``1 - p``. The 64-bit draws come from numpy's SFC64 generator (Chris
Doty-Humphrey's Small Fast Chaotic PRNG, which passes PractRand and BigCrush), seeded by one draw of torch's
generator per call, so ``torch.manual_seed`` and a checkpoint's RNG state still fix every mask: on the
2-core CPU it makes 64-bit numbers 2.2-3.3x as fast as torch's Mersenne Twister, and the whole call is
5.5-6x as fast as ``F.dropout`` (``benchmarks/dropout_speed.py``, ``docs/benchmarks.md``). Because dropout
is slow there, attention with dropout on CPU runs as explicit matmul-softmax-dropout-matmul (SDPA's CPU
kernels cannot do dropout and fall back to the same maths with the slow dropout); everywhere else, and
always without dropout, it is SDPA. Under ``torch.compile`` dropout is ``F.dropout``: Inductor draws inside
its fused kernel, and numpy would break the graph.

Causal decoding one step at a time reuses the keys and values of earlier positions (``KVCache``, as in
Hugging Face's ``past_key_value``): the model's encoder takes an optional cache, hands each attention
module its ``LayerCache``, and the attention module that owns the weights appends the new rows' keys and
values and attends over all of them. There is no second copy of any architecture's attention for decoding.

Sources: PyTorch's FlexAttention (``torch.nn.attention.flex_attention``, document masking example in its
blog post "FlexAttention: The Flexibility of PyTorch with the Performance of FlashAttention", 2024);
ModernBERT (Warner et al., 2024) unpads packed rows for variable-length attention, the GPU analogue of
``split``.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# The exact forms that may mask rows of several documents, per device type, in order of preference; the
# first that can run is used (flex: CUDA, a caller that supports it, no dropout; split: every document one
# contiguous run; dense: always). Measured with benchmarks/attention_forms.py (module docstring).
DOCUMENT_FORMS: dict[str, tuple[str, ...]] = {"cpu": ("dense",), "cuda": ("flex", "dense")}
FORMS = ("flex", "split", "dense")


@dataclass
class AttentionMask:
    """What every attention layer of one forward pass needs; built once, reused by all layers.

    mask:      bool, True = may attend; ``[B, 1, 1, T]`` or ``[B, 1, T, T]``; None = attend to all.
    is_causal: causal attention without a mask: pass ``is_causal=True`` to SDPA (within each run of
               ``segments`` when those are set).
    keep_rows: float ``[B, 1, T, 1]`` (or ``[B, 1, 1, 1]``) with 0 at query rows that may attend to
               nothing; multiply the attention output by it. None = every row has a key.
    segments:  the ``split`` form: per row, the ``(start, end)`` runs of one document each; every run
               attends as its own sequence, positions outside the runs (padding) give 0.
    block_mask: the ``flex`` form: a FlexAttention ``BlockMask`` (causality and padding included).
    documents: for ``split`` and ``flex``, ``(document_ids [B, T], attention_mask [B, T] or None, causal,
               dtype of keep_rows)``, from which ``rows`` builds the dense mask of a few query rows.
    """

    mask: torch.Tensor | None = None
    is_causal: bool = False
    keep_rows: torch.Tensor | None = None
    segments: tuple[tuple[tuple[int, int], ...], ...] | None = None
    block_mask: Any = None
    documents: tuple[torch.Tensor, torch.Tensor | None, bool, torch.dtype] | None = None
    _bias: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def bias(self, T: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """``mask`` (or the causal triangle of T positions) as an additive bias: 0 where a query may attend,
        -inf elsewhere, ``mask``'s shape (``[1, 1, T, T]`` causal); None = attend to all. Made once per
        forward and shared by every layer, which adds it to its scores in place: one pass, and nothing in
        backward (``masked_fill`` takes a pass each way and is slow on CPU)."""
        if self.mask is None and not self.is_causal:
            return None
        if self._bias is None or self._bias.dtype != dtype or (self.mask is None and self._bias.shape[-1] != T):
            allowed = self.mask if self.mask is not None else torch.ones(
                T, T, dtype=torch.bool, device=device).tril()[None, None]
            self._bias = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))
        return self._bias

    @property
    def form(self) -> str:
        """The form's name: none, causal, padding, dense, split or flex (for benchmarks and tests)."""
        if self.block_mask is not None:
            return "flex"
        if self.segments is not None:
            return "split"
        if self.mask is None:
            return "causal" if self.is_causal else "none"
        return "padding" if self.mask.shape[2] == 1 else "dense"

    def dense(self, T: int) -> AttentionMask:
        """The same attention as a dense mask (``split`` and ``flex`` forms; others are returned as they are)."""
        if self.documents is None:
            return self
        ids, valid, causal, dtype = self.documents
        return _with_keep_rows(_dense_mask(valid, ids, causal, T), dtype)

    def rows(self, at: torch.Tensor, T: int) -> AttentionMask:
        """The mask of the query rows ``at`` ``[B, M]`` (positions) over keys at all T positions, in the
        dense form (or none): for a sparse last layer, whose M rows are few."""
        mask, keep = self.mask, self.keep_rows
        if self.documents is not None:
            ids, valid, causal, dtype = self.documents
            return _with_keep_rows(_dense_mask(valid, ids, causal, T, at), dtype)
        if self.is_causal:  # SDPA's is_causal assumes queries 0..M-1; spell the triangle out for these rows
            mask = torch.arange(T, device=at.device)[None, None, None, :] <= at[:, None, :, None]  # [B, 1, M, T]
        elif mask is not None and mask.shape[2] != 1:
            mask = mask.gather(2, at[:, None, :, None].expand(-1, 1, -1, mask.shape[-1]))  # [B, 1, M, T]
        if keep is not None and keep.shape[2] != 1:
            keep = keep.gather(2, at[:, None, :, None])  # [B, 1, M, 1]
        return AttentionMask(mask=mask, is_causal=False, keep_rows=keep)



def build_attention_mask(
    attention_mask: torch.Tensor | None = None,
    document_ids: torch.Tensor | None = None,
    causal: bool = False,
    seq_len: int | None = None,
    dtype: torch.dtype = torch.float32,
    forms: tuple[str, ...] = ("dense",),
) -> AttentionMask:
    """Combine padding, document boundaries and causality into the cheapest exact form (module docstring).

    attention_mask: ``[B, T]``, 1 (or True) = real token, 0 = padding; padded keys are never attended.
    document_ids:   ``[B, T]``, positions attend only to keys with the same id (packed rows).
    causal:         queries attend only to keys at the same or earlier positions.
    seq_len:        T; needed only for ``causal`` when both tensors are None.
    dtype:          dtype of ``keep_rows`` (the model's activation dtype).
    forms:          the document forms the caller's attention can run, in order of preference
                    (``document_forms`` picks them for a model); ``dense`` is the fallback of every list.
    """
    padding_at_end = True
    if attention_mask is not None:
        valid = attention_mask.bool()
        # one host sync for both facts: no padding at all, and padding only at the end of rows
        full, padding_at_end = torch.stack([valid.all(), (valid[:, 1:] <= valid[:, :-1]).all()]).tolist()
        if full:  # an all-ones padding mask masks nothing; dropping it keeps the fast mask-free kernels
            attention_mask = None
    if (document_ids is not None and attention_mask is None and document_ids.device.type == "cpu"
            and bool((document_ids == document_ids[:, :1]).all())):
        document_ids = None  # one document per row and no padding: nothing is masked
    if attention_mask is None and document_ids is None:
        return AttentionMask(is_causal=causal)
    T = (attention_mask if attention_mask is not None else document_ids).shape[1] if seq_len is None else seq_len
    if document_ids is None:
        if causal and padding_at_end:  # a real query's earlier keys are all real
            return AttentionMask(is_causal=True)
        return _with_keep_rows(_dense_mask(attention_mask, None, causal, T), dtype)
    documents = (document_ids, attention_mask, causal, dtype)
    for form in forms:
        if form == "flex" and not _FLEX_FAILED:
            try:
                return AttentionMask(block_mask=_block_mask(document_ids, attention_mask, causal),
                                     documents=documents)
            except Exception as error:  # noqa: BLE001 - any failure: this process uses the next form
                _flex_failed(error)
        if form == "split":
            segments = document_runs(document_ids, attention_mask)
            if segments is not None:
                return AttentionMask(is_causal=causal, segments=segments, documents=documents)
        if form == "dense":
            break
    return _with_keep_rows(_dense_mask(attention_mask, document_ids, causal, T), dtype)


def document_forms(device_type: str, dropout: bool, flex: bool) -> tuple[str, ...]:
    """The document forms to try on ``device_type`` (``DOCUMENT_FORMS``), less flex when the caller cannot
    run it (``flex`` False: e.g. an attention with its own float bias), drops attention probabilities
    (FlexAttention has no dropout) or flex is not available here."""
    usable = flex and not dropout and flex_available()
    return tuple(f for f in DOCUMENT_FORMS.get(device_type, ("dense",)) if f != "flex" or usable)


def _dense_mask(attention_mask: torch.Tensor | None, document_ids: torch.Tensor | None, causal: bool, T: int,
                at: torch.Tensor | None = None) -> torch.Tensor | None:
    """The bool mask (True = may attend) of query rows ``at`` ``[B, M]`` (default: all T) over T keys:
    ``[B, 1, M, T]``, or ``[B, 1, 1, T]`` for padding alone; None when nothing is masked."""
    mask: torch.Tensor | None = None
    ref = attention_mask if attention_mask is not None else document_ids
    device = ref.device if ref is not None else (at.device if at is not None else None)
    if attention_mask is not None:
        mask = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, T]
    if document_ids is not None:
        queries = document_ids if at is None else document_ids.gather(1, at)  # [B, M]
        same_doc = (queries[:, :, None] == document_ids[:, None, :])[:, None]  # [B, 1, M, T]
        mask = same_doc if mask is None else mask & same_doc
    if causal:
        rows = torch.arange(T, device=device)[:, None] if at is None else at[:, None, :, None]
        lower = torch.arange(T, device=device) <= rows  # [T, T] or [B, 1, M, T]
        mask = lower if mask is None else mask & lower
    if mask is not None and mask.dim() == 2:
        mask = mask[None, None]
    return mask


def _with_keep_rows(mask: torch.Tensor | None, dtype: torch.dtype) -> AttentionMask:
    """A dense mask -> AttentionMask; rows that may attend to nothing attend everywhere, then are zeroed."""
    if mask is None:
        return AttentionMask()
    row_has_key = mask.any(dim=-1, keepdim=True)  # [B, 1, T or 1, 1]
    if bool(row_has_key.all()):
        return AttentionMask(mask=mask)
    return AttentionMask(mask=mask | ~row_has_key, keep_rows=row_has_key.to(dtype))


def document_runs(document_ids: torch.Tensor,
                  attention_mask: torch.Tensor | None) -> tuple[tuple[tuple[int, int], ...], ...] | None:
    """Per row, the ``(start, end)`` runs of real tokens of one document id; None when some id occurs in
    two runs of a row (the split form would cut that document in two). One host copy of ``[B, T]``."""
    ids = document_ids.detach().cpu().numpy().astype(np.int64)
    real = np.ones(ids.shape, dtype=bool) if attention_mask is None else attention_mask.detach().cpu().numpy() != 0
    B, T = ids.shape
    # a run starts where the id or realness changes
    change = np.ones((B, T), dtype=bool)
    change[:, 1:] = (ids[:, 1:] != ids[:, :-1]) | (real[:, 1:] != real[:, :-1])
    out = []
    for b in range(B):
        starts = np.flatnonzero(change[b])
        ends = np.append(starts[1:], T)
        keep = real[b, starts]
        starts, ends = starts[keep], ends[keep]
        if len(set(ids[b, starts].tolist())) != len(starts):
            return None
        out.append(tuple(zip(starts.tolist(), ends.tolist())))
    return tuple(out)


_FLEX_FAILED: list[str] = []  # why FlexAttention failed in this process, if it did (then never tried again)


def _flex_failed(error: Exception) -> None:
    """Fall back from FlexAttention for the rest of the process (a missing compiler, an unsupported GPU)."""
    if not _FLEX_FAILED:
        warnings.warn(f"FlexAttention failed ({type(error).__name__}: {error}); using the next document form",
                      RuntimeWarning, stacklevel=3)
    _FLEX_FAILED.append(f"{type(error).__name__}: {error}")


@functools.cache
def flex_available() -> bool:
    """FlexAttention is in this torch and there is a CUDA device (whether it compiles is found out at
    the first call: a failure falls back to the next form for the rest of the process)."""
    if not torch.cuda.is_available():
        return False
    return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


@functools.cache
def _flex_attention(device_type: str) -> Callable[..., torch.Tensor]:
    """flex_attention, compiled once per process on CUDA (uncompiled it materialises every score). On the
    CPU it stays eager: forward only, for tests and benchmarks that ask for the form by name."""
    from torch.nn.attention.flex_attention import flex_attention  # lazy: optional, CUDA only
    return torch.compile(flex_attention, dynamic=False) if device_type == "cuda" else flex_attention


def _block_mask(document_ids: torch.Tensor, attention_mask: torch.Tensor | None, causal: bool) -> Any:
    """A FlexAttention BlockMask: same document, real key, and (causal) not later; ``[B, T]`` inputs."""
    from torch.nn.attention.flex_attention import create_block_mask  # lazy: optional, CUDA only
    B, T = document_ids.shape
    valid = None if attention_mask is None else attention_mask.bool()

    def mask_mod(b, h, q, k):
        ok = document_ids[b, q] == document_ids[b, k]
        if valid is not None:
            ok = ok & valid[b, k]
        if causal:
            ok = ok & (k <= q)
        return ok

    return create_block_mask(mask_mod, B, None, T, T, device=document_ids.device)


def query_rows(selected: torch.Tensor, B: int, T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat positions ``selected`` ``[N]`` (row-major, sorted, N >= 1) of a ``[B, T]`` batch, laid out per
    row for a sparse last layer -> (at ``[B, M]`` positions, M = most in one row, spare slots repeat
    position 0; rows ``[N]``; slot ``[N]``): selected n sits at ``[rows[n], slot[n]]`` of ``[B, M, ...]``."""
    rows, cols = selected // T, selected % T  # [N]
    counts = torch.bincount(rows, minlength=B)
    slot = torch.arange(selected.numel(), device=selected.device) - (counts.cumsum(0) - counts)[rows]
    at = torch.zeros(B, int(counts.max()), dtype=torch.long, device=selected.device)
    at[rows, slot] = cols
    return at, rows, slot


def attend_segments(q: torch.Tensor, segments: tuple[tuple[tuple[int, int], ...], ...],
                    one: Callable[[Any, int, int], torch.Tensor]) -> torch.Tensor:
    """The split form: ``one(rows, start, end)`` -> ``[len(rows), H, end - start, d]`` for every run (rows: a
    slice of one row, or a list of the rows that are one run from 0 to T, batched in a single call); laid
    back into ``[B, H, T, d]`` (q's shape) with zeros between runs. Concatenation, so backward only splits."""
    B, H, T, d = q.shape
    whole = [b for b, runs in enumerate(segments) if runs == ((0, T),)]
    if len(whole) == B:
        return one(slice(0, B), 0, T)
    whole_out = one(whole, 0, T) if whole else None
    rows = []
    for b, runs in enumerate(segments):
        if whole_out is not None and runs == ((0, T),):
            i = whole.index(b)
            rows.append(whole_out[i:i + 1])
            continue
        pieces, at = [], 0
        for s, e in runs:
            if s > at:
                pieces.append(q.new_zeros(1, H, s - at, d))
            pieces.append(one(slice(b, b + 1), s, e))
            at = e
        if at < T:
            pieces.append(q.new_zeros(1, H, T - at, d))
        rows.append(torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0])
    return torch.cat(rows, dim=0)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout, same as ``F.dropout`` in distribution; fast on CPU (see the module docstring)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        # GPU kernels are fused and fast already; a compiled graph draws with Inductor's own generator
        # in its fused kernel (numpy's would break the graph at every dropout)
        return F.dropout(x, p, training=True)
    n = x.numel()
    # 64-bit draws, viewed as four uniform int16s each; the generator's seed is one draw of torch's
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    raw = np.random.SFC64(seed).random_raw((n + 3) // 4)
    bits = torch.from_numpy(raw.view(np.int16)[:n]).view(x.shape)
    # keep where bits >= threshold, as 0/1 by fp32 arithmetic (exact on 16-bit integers; bf16 is not):
    # a comparison to a bool tensor and its conversion take about twice as long on CPU
    threshold = -32768 + round(p * 65536)
    keep = bits.to(torch.float32).sub_(threshold - 1).clamp_(0.0, 1.0)
    return x * keep.mul_(1.0 / (1.0 - p)).to(x.dtype)


def attend_with_bias(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                     dropout_p: float, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v with dropout on the probabilities: q ``[B, H, Q, d]``, k and v
    ``[B, H, S, d]``, bias a float tensor broadcastable to ``[B, H, Q, S]`` (-inf: not attended) or None ->
    ``[B, H, Q, d]``. SDPA, except on a CPU with dropout: SDPA's CPU kernels cannot drop, and its fallback
    draws the mask with ``bernoulli_``, several times slower than ``dropout`` here (benchmarks/dropout_speed.py),
    so the same maths is spelled out with ``dropout``."""
    if dropout_p > 0.0 and q.device.type == "cpu":
        scores = q @ k.transpose(-2, -1)  # [B, H, Q, S]; the matmul's backward does not read it: add in place
        if scale != 1.0:
            scores = scores * scale
        if bias is not None:
            scores = scores.add_(bias)
        return dropout(torch.softmax(scores, dim=-1), dropout_p, True) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn: AttentionMask,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v with dropout on the probabilities, in ``attn``'s form.

    q, k, v: ``[B, H, T, d]`` -> ``[B, H, T, d]``; ``scale`` defaults to ``1/sqrt(d)``.
    """
    if attn.segments is not None:
        one = AttentionMask(is_causal=attn.is_causal)
        return attend_segments(q, attn.segments, lambda b, s, e: attend(
            q[b, :, s:e], k[b, :, s:e], v[b, :, s:e], one, dropout_p, scale))
    if attn.block_mask is not None and not _FLEX_FAILED:
        try:
            return _flex_attention(q.device.type)(q, k, v, block_mask=attn.block_mask, scale=scale)
        except Exception as error:  # noqa: BLE001 - compilation or kernel failure: dense from now on
            _flex_failed(error)
    if attn.block_mask is not None:
        attn = attn.dense(q.shape[-2])
    if dropout_p > 0.0 and q.device.type == "cpu":
        bias = attn.bias(q.shape[-2], q.dtype, q.device)
        out = attend_with_bias(q, k, v, bias, dropout_p, q.shape[-1] ** -0.5 if scale is None else scale)
    else:
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn.mask, dropout_p=dropout_p, is_causal=attn.is_causal, scale=scale
        )
    if attn.keep_rows is not None:
        out = out * attn.keep_rows
    return out


class _Memo:
    """``memo(name, make)``: ``make()`` the first time ``name`` is asked for, the stored result afterwards.

    A cache keeps tensors derived from the weights that stay fixed while decoding (BERT's fused QKV
    matrix, LTG-BERT's projected position table and bucket indices), so each is computed once per cache.
    A cache is for inference: dropout off (``model.eval()``), weights unchanged between steps.
    """

    def __init__(self) -> None:
        self._memo: dict[str, Any] = {}

    def memo(self, name: str, make: Callable[[], Any]) -> Any:
        if name not in self._memo:
            self._memo[name] = make()
        return self._memo[name]


class LayerCache(_Memo):
    """One attention layer's keys and values of the positions fed so far (``[B, H, max_len, d]`` buffers)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.keys, self.values = keys, values
        self.length = 0

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new rows' keys and values ``[B, H, n, d]`` -> those of all positions ``[B, H, S, d]``."""
        p, n = self.length, k.shape[2]
        self.keys[:, :, p:p + n] = k
        self.values[:, :, p:p + n] = v
        self.length = p + n
        return self.keys[:, :, :p + n], self.values[:, :, :p + n]


class KVCache(_Memo):
    """Keys and values of every layer for incremental causal decoding of ``batch`` rows.

    The encoder reads ``length`` (positions already fed = the position of the first new row) and
    ``causal_mask(n)`` before its layers run, then passes ``cache[i]`` to layer i's attention, which
    appends its keys and values. After one forward over n new rows, ``length`` has grown by n.
    """

    def __init__(self, num_layers: int, batch: int, num_heads: int, head_size: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__()
        shape = (batch, num_heads, max_len, head_size)
        self.layers = [LayerCache(torch.zeros(shape, dtype=dtype, device=device),
                                  torch.zeros(shape, dtype=dtype, device=device)) for _ in range(num_layers)]
        self.max_len = max_len

    @property
    def length(self) -> int:
        return self.layers[0].length

    def __getitem__(self, layer: int) -> LayerCache:
        return self.layers[layer]

    def causal_mask(self, n: int, causal: bool = True, attention_mask: torch.Tensor | None = None,
                    document_ids: torch.Tensor | None = None) -> AttentionMask:
        """The attention mask of the next ``n`` positions over all ``length + n``. An encoder hands on what it
        was asked for: a cache decodes causally, without padding or documents, and refuses anything else."""
        if not causal or attention_mask is not None or document_ids is not None:
            raise ValueError("a KVCache decodes causally, without padding or documents")
        p = self.length
        if p + n > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions; {p + n} asked")
        if n == 1:  # the newest position attends to every key
            return AttentionMask()
        device = self.layers[0].keys.device
        allowed = torch.arange(p + n, device=device)[None, :] <= torch.arange(p, p + n, device=device)[:, None]
        return AttentionMask(mask=allowed[None, None])  # [1, 1, n, p+n]
