"""Incremental causal decoding with a key/value cache, driven through the model's own encoder.

``CausalStepper(model, batch, max_len)`` feeds new tokens ``[B, n]`` at positions ``p..p+n-1`` and returns
their final hidden states ``[B, n, D]``, exactly what ``model.encode(ids[:, :p+n], causal=True)[:, p:]``
gives (up to float rounding), while computing only the new rows: ``model.encode(..., cache=...)`` hands
each layer's attention module its slot of a ``models.attention.KVCache``, where the module that owns the
weights keeps the keys and values of earlier positions (as Hugging Face's ``past_key_value``).

Supported: ``BertForMaskedLM`` (absolute positions) and ``LtgBertForMaskedLM`` (LTG-BERT and GPT-BERT:
relative-position bias, attention gate, DWA). ``supports_cache(model)`` says whether a model is one of
them; the autoregressive strategy falls back to full causal passes otherwise. Eval mode only (no dropout).
"""

from __future__ import annotations

import torch
from torch import nn

from masklm.models.attention import KVCache
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
