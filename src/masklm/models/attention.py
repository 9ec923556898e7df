"""Attention masks, the attention core and dropout, shared by every architecture.

An objective asks a model for one of a few attention modes: bidirectional (the default), causal, and
block-diagonal over packed documents, each combined with key padding. ``build_attention_mask`` turns
those requests into the cheapest thing ``torch.nn.functional.scaled_dot_product_attention`` accepts:
no mask at all when nothing is masked (so SDPA can pick its fastest kernel), ``is_causal=True`` for
plain causal attention, a broadcastable ``[B, 1, 1, T]`` key-padding mask, or a full ``[B, 1, T, T]``
mask only when documents or causality mix with padding.

A query row that may attend to nothing (e.g. a padding position whose document id matches no real key)
would make softmax divide by zero and turn into NaN, in the forward pass and in every gradient that
touches it. We let such rows attend everywhere (any finite result will do) and zero their output
afterwards with ``AttentionMask.keep_rows``.

On CPU, dropout is the slowest elementwise op of a training step: ``bernoulli_`` draws one 32-bit
number per element. ``dropout`` here draws 16 bits per element (four per 64-bit draw), about 4x faster,
with a keep probability within 1/65536 of ``1 - p``. For the same reason, attention with dropout on CPU
runs as explicit matmul-softmax-dropout-matmul (SDPA's CPU kernels cannot do dropout and fall back to
the same maths with the slow dropout); everywhere else, and always without dropout, it is SDPA.

Causal decoding one step at a time reuses the keys and values of earlier positions (``KVCache``, as in
Hugging Face's ``past_key_value``): the model's encoder takes an optional cache, hands each attention
module its ``LayerCache``, and the attention module that owns the weights appends the new rows' keys and
values and attends over all of them. There is no second copy of any architecture's attention for decoding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class AttentionMask:
    """What every attention layer of one forward pass needs; built once, reused by all layers.

    mask:      bool, True = may attend; ``[B, 1, 1, T]`` or ``[B, 1, T, T]``; None = attend to all.
    is_causal: pass ``is_causal=True`` to SDPA (only when ``mask`` is None).
    keep_rows: float ``[B, 1, T, 1]`` (or ``[B, 1, 1, 1]``) with 0 at query rows that may attend to
               nothing; multiply the attention output by it. None = every row has a key.
    """

    mask: torch.Tensor | None = None
    is_causal: bool = False
    keep_rows: torch.Tensor | None = None


def build_attention_mask(
    attention_mask: torch.Tensor | None = None,
    document_ids: torch.Tensor | None = None,
    causal: bool = False,
    seq_len: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> AttentionMask:
    """Combine padding, document boundaries and causality into one SDPA mask.

    attention_mask: ``[B, T]``, 1 (or True) = real token, 0 = padding; padded keys are never attended.
    document_ids:   ``[B, T]``, positions attend only to keys with the same id (packed rows).
    causal:         queries attend only to keys at the same or earlier positions.
    seq_len:        T; needed only for ``causal`` when both tensors are None.
    dtype:          dtype of ``keep_rows`` (the model's activation dtype).
    """
    # An all-ones padding mask masks nothing; dropping it keeps the fast mask-free kernels.
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None
    if attention_mask is None and document_ids is None:
        return AttentionMask(is_causal=causal)

    ref = attention_mask if attention_mask is not None else document_ids
    T = ref.shape[1] if seq_len is None else seq_len
    mask: torch.Tensor | None = None
    if attention_mask is not None:
        mask = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, T]
    if document_ids is not None:
        same_doc = (document_ids[:, :, None] == document_ids[:, None, :])[:, None]  # [B, 1, T, T]
        mask = same_doc if mask is None else mask & same_doc
    if causal:
        lower = torch.ones(T, T, dtype=torch.bool, device=ref.device).tril()
        mask = mask & lower

    row_has_key = mask.any(dim=-1, keepdim=True)  # [B, 1, T or 1, 1]
    if bool(row_has_key.all()):
        return AttentionMask(mask=mask)
    return AttentionMask(mask=mask | ~row_has_key, keep_rows=row_has_key.to(dtype))


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout, same as ``F.dropout`` in distribution; fast on CPU (see the module docstring)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":  # GPU kernels are fused and fast already
        return F.dropout(x, p, training=True)
    n = x.numel()
    # 64-bit draws over (almost) the full int64 range, viewed as four uniform int16s each
    bits = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
    bits = bits.view(torch.int16)[:n].view(x.shape)
    keep_scaled = (bits >= -32768 + round(p * 65536)).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * keep_scaled


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn: AttentionMask,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v with dropout on the probabilities.

    q, k, v: ``[B, H, T, d]`` -> ``[B, H, T, d]``; ``scale`` defaults to ``1/sqrt(d)``.
    """
    if dropout_p > 0.0 and q.device.type == "cpu":
        scores = q @ k.transpose(-2, -1)  # [B, H, T, T]
        if scale is None:
            scale = q.shape[-1] ** -0.5
        if scale != 1.0:
            scores = scores * scale
        if attn.mask is not None:
            scores = scores.masked_fill(~attn.mask, float("-inf"))
        elif attn.is_causal:
            T = q.shape[-2]
            upper = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(upper, float("-inf"))
        out = dropout(torch.softmax(scores, dim=-1), dropout_p, True) @ v
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
