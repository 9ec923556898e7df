"""Model architectures: ``build_model(config)`` turns a ModelConfig into an ``nn.Module``.

Every model follows the forward contract in DESIGN.md §2:
``model(input_ids, attention_mask=None, labels=None, causal=False, document_ids=None) -> MaskedLMOutput``,
plus ``model.encode(...) -> [B, T, D]`` and ``model.predict(hidden) -> logits``.

A model is an encoder with heads attached: ``bert.BertModel`` / ``ltg_bert.LtgBertModel`` give ``[B, T, D]``
(and take an ``attention.KVCache`` for causal decoding); ``heads.py`` holds the masked-LM forward, head
interface and loss that every architecture shares, and the pooling of sequence vectors.
"""

from __future__ import annotations

from torch import nn

from masklm.config import ModelConfig
from masklm.errors import ConfigError
from masklm.models.outputs import MaskedLMOutput


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised model for ``config`` (train mode, fp32, on CPU)."""
    if config.arch == "bert":
        from masklm.models.bert import BertForMaskedLM

        return BertForMaskedLM(config)
    if config.arch in ("ltg-bert", "gpt-bert"):
        from masklm.models.ltg_bert import LtgBertForMaskedLM

        return LtgBertForMaskedLM(config)
    raise ConfigError(f"unknown architecture {config.arch!r}; choose one of: bert, ltg-bert, gpt-bert")


__all__ = ["MaskedLMOutput", "build_model"]
