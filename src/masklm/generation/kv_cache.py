"""Incremental causal decoding with a key/value cache, driven through the model's own encoder.

``CausalStepper(model, batch, max_len)`` feeds new tokens ``[B, n]`` at positions ``p..p+n-1`` and returns
their final hidden states ``[B, n, D]``, exactly what ``model.encode(ids[:, :p+n], causal=True)[:, p:]``
gives (up to float rounding), while computing only the new rows: ``model.encode(..., cache=...)`` hands
each layer's attention module its slot of a ``models.attention.KVCache``, where the module that owns the
weights keeps the keys and values of earlier positions (as Hugging Face's ``past_key_value``).

Supported: ``BertForMaskedLM`` (absolute positions) and ``LtgBertForMaskedLM`` (LTG-BERT and GPT-BERT:
relative-position bias, attention gate, DWA). ``supports_cache(model)`` says whether a model is one of
them; the autoregressive strategy falls back to full causal passes otherwise. Eval mode only (no dropout).

``WindowCache`` is the same cache for decoding that mixes masked and causal reading (the ``threshold``
and ``speculative`` strategies): the caller feeds a window of columns and says, for each new row, up to
which column it may see (``limits``), so a block attends to the cached prefix and to itself
bidirectionally, and a verification pass attends causally; ``truncate`` drops the keys and values of rows
that were fed only to be read (a block still being decoded, rejected drafts). The keys and values stay in
the attention modules' own ``LayerCache`` slots; only the mask and the length are set here.
"""

from __future__ import annotations

import torch
from torch import nn

from masklm.models.attention import AttentionMask, KVCache
from masklm.models.bert import BertForMaskedLM
from masklm.models.ltg_bert import LtgBertForMaskedLM


def supports_cache(model: nn.Module) -> bool:
    return isinstance(model, (BertForMaskedLM, LtgBertForMaskedLM))


class CausalStepper:
    """Incremental causal encoder over one batch; ``step(ids [B, n]) -> hidden [B, n, D]``."""

    def __init__(self, model: nn.Module, batch: int, max_len: int) -> None:
        if not supports_cache(model):
            raise TypeError(f"no key/value cache for {type(model).__name__}")
        self.model = model
        cfg = model.config
        H = cfg.num_attention_heads
        p = next(model.parameters())
        self.cache = KVCache(cfg.num_hidden_layers, batch, H, cfg.hidden_size // H, max_len, p.dtype, p.device)

    @torch.no_grad()
    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Feed ids ``[B, n]`` at the next n positions -> their hidden states ``[B, n, D]``."""
        return self.model.encode(ids, causal=True, cache=self.cache)


class WindowCache(KVCache):
    """A ``KVCache`` over the columns of one canvas, fed in windows with a per-row key limit.

    real: ``[B, W]`` bool, True = a real token (padding keys are never attended). ``feed(ids, limits)``
    runs the model on the next ``n`` columns; new row i may attend to the keys at columns
    ``< limits[i]`` (cached or new), so ``limits[i] = i + 1`` (absolute column) is causal and one shared
    limit is a bidirectional block.
    """

    def __init__(self, model: nn.Module, real: torch.Tensor) -> None:
        if not supports_cache(model):
            raise TypeError(f"no key/value cache for {type(model).__name__}")
        cfg, p = model.config, next(model.parameters())
        H = cfg.num_attention_heads
        super().__init__(cfg.num_hidden_layers, real.shape[0], H, cfg.hidden_size // H, real.shape[1], p.dtype,
                         p.device)
        self.model, self.real = model, real.bool()
        pads = (~self.real).any(0).nonzero()
        self.all_real = int(pads[0]) if len(pads) else real.shape[1]  # columns < all_real are real in every row
        self._next: AttentionMask | None = None

    @torch.no_grad()
    def feed(self, ids: torch.Tensor, limits: torch.Tensor) -> torch.Tensor:
        """ids ``[B, n]`` at columns ``length..length+n-1``, limits ``[n]`` long -> hidden ``[B, n, D]``."""
        start, n = self.length, ids.shape[1]
        if n == 1 and int(limits[0]) == start + 1 and start < self.all_real:  # one causal step: every key
            self._next = AttentionMask()
            return self.model.encode(ids, causal=True, cache=self)
        keys = torch.arange(start + n, device=ids.device)
        allowed = (keys[None, :] < limits[:, None].to(ids.device))[None] & self.real[:, None, :start + n]
        self._next = AttentionMask(mask=allowed[:, None])  # [B, 1, n, start + n]
        return self.model.encode(ids, causal=True, cache=self)

    def causal_mask(self, n: int, causal: bool = True, attention_mask: torch.Tensor | None = None,
                    document_ids: torch.Tensor | None = None) -> AttentionMask:
        """The mask ``feed`` prepared (the encoder asks for it before its layers run)."""
        rows = None if self._next is None else (1 if self._next.mask is None else self._next.mask.shape[2])
        if rows != n or self.length + n > self.max_len:
            raise ValueError("a WindowCache is fed through feed(), within the canvas width")
        mask, self._next = self._next, None
        return mask

    def truncate(self, length: int) -> None:
        """Forget the keys and values of columns ``>= length`` (they are overwritten by the next feed)."""
        for layer in self.layers:
            layer.length = min(layer.length, length)
