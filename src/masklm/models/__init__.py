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
from masklm.models.bert import BertForMaskedLM
from masklm.models.ltg_bert import LtgBertForMaskedLM
from masklm.models.outputs import MaskedLMOutput

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "bert": BertForMaskedLM, "ltg-bert": LtgBertForMaskedLM, "gpt-bert": LtgBertForMaskedLM,
}


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised model for ``config`` (train mode, fp32, on CPU)."""
    if config.arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {config.arch!r}; choose one of: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[config.arch](config)


__all__ = ["ARCHITECTURES", "MaskedLMOutput", "build_model"]
