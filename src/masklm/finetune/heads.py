"""Task heads on a pretrained encoder, and fine-tuned model folders.

A fine-tuned model is the pretrained encoder (BERT: ``bert.*``; LTG-BERT / GPT-BERT: ``embedding.*`` and
``transformer.*``, the same names as in the pretrained folder) plus a head under ``head.*``. The
masked-LM head is dropped. Its ``config.json`` is the encoder's plus a ``task`` block::

    "task": {"type": "classification" | "regression" | "tagging", "labels": [...], "num_labels": N,
             "id2label": {"0": ...}, "pooling": "mean" | "cls", ...}

Sequence heads (classification, regression) pool the final hidden states, by default the **mean** over
the non-padding tokens ([CLS] and [SEP] included; ``pooling="cls"`` takes the first token instead),
then dropout -> dense D->D -> tanh -> dropout -> linear D->num_labels. The tagging head is dropout ->
linear D->num_tags on every token; a word's tag is read at its **first sub-token**.
A BERT folder's config says ``architectures: ["BertModel"]``, so ``transformers.AutoModel`` loads its
encoder (the head is ignored).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from masklm.config import ModelConfig
from masklm.errors import ConfigError, InputError, ModelDirError

TASKS = ("classification", "regression", "tagging")
POOLINGS = ("mean", "cls")
# The masked-LM head's top-level module in each family; everything else is the encoder.
_MLM_HEAD = {"bert": "cls", "ltg": "classifier"}


@dataclass
class FineTunedConfig(ModelConfig):
    """A ModelConfig with the ``task`` block, so ``save_model_dir`` writes fine-tuned folders as is."""

    task: dict[str, Any] | None = None

    def to_json_dict(self) -> dict[str, Any]:
        out = super().to_json_dict()
        if self.arch == "bert":
            out["architectures"] = ["BertModel"]
        return out


def check_task(task: Any, where: str) -> dict[str, Any]:
    """Validate a ``task`` block; returns it, or raises ModelDirError saying what is wrong."""
    if not isinstance(task, dict) or task.get("type") not in TASKS:
        raise ModelDirError(f"{where}: 'task' must be an object whose 'type' is one of {', '.join(TASKS)}")
    labels = task.get("labels")
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ModelDirError(f"{where}: task 'labels' must be a list of strings")
    expected = 1 if task["type"] == "regression" else len(labels)
    if task.get("num_labels") != expected or expected < 1:
        raise ModelDirError(f"{where}: task 'num_labels' must be {expected} for these labels")
    if task["type"] != "tagging" and task.get("pooling", "mean") not in POOLINGS:
        raise ModelDirError(f"{where}: task 'pooling' must be one of {', '.join(POOLINGS)}")
    return task


class SequenceHead(nn.Module):
    """Pool ``[B, T, D]`` hidden states (mean or first token), then a two-layer classifier -> ``[B, N]``."""

    def __init__(self, hidden_size: int, num_labels: int, pooling: str = "mean", dropout: float = 0.1) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # [B, T, 1]
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        x = torch.tanh(self.dense(self.dropout(pooled)))
        return self.out(self.dropout(x))


class TokenHead(nn.Module):
    """Per-token tag logits ``[B, T, N]``."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(hidden))


class FineTunedModel(nn.Module):
    """A pretrained masked-LM's encoder with a task head.

    ``model(input_ids, attention_mask)`` gives the task logits (``[B, N]`` for sequences, ``[B, T, N]``
    for tagging); ``encode`` is the encoder's, so embeddings still work; ``predict`` (the MLM head)
    raises InputError: fill-mask and scoring need a pretrained, not a fine-tuned, folder.
    """

    def __init__(self, base: nn.Module, task: dict[str, Any]) -> None:
        super().__init__()
        base_config: ModelConfig = base.config
        fields = {k: getattr(base_config, k) for k in base_config.__dataclass_fields__ if k != "task"}
        self.config = FineTunedConfig(**fields, task=task)
        self.task = task
        object.__setattr__(self, "base", base)  # not a submodule: its MLM head is left out of the weights
        base.config = self.config
        if list(base.named_parameters(recurse=False)):
            raise ModelDirError("the model has parameters outside its submodules; masklm cannot fine-tune it")
        head_name = _MLM_HEAD[base_config.family]
        for name, child in base.named_children():
            if name != head_name:
                self.add_module(name, child)  # the same module objects, so base.encode uses them
        drop = base_config.hidden_dropout_prob
        n = int(task["num_labels"])
        if task["type"] == "tagging":
            self.head: nn.Module = TokenHead(base_config.hidden_size, n, drop)
        else:
            self.head = SequenceHead(base_config.hidden_size, n, task.get("pooling", "mean"), drop)
        std = base_config.initializer_range or 0.02
        for module in self.head.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, std)
                nn.init.zeros_(module.bias)

    def train(self, mode: bool = True) -> FineTunedModel:
        super().train(mode)
        self.base.train(mode)
        return self

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               causal: bool = False, document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's final hidden states ``[B, T, D]``."""
        return self.base.encode(input_ids, attention_mask, causal, document_ids)

    def predict(self, hidden: torch.Tensor) -> torch.Tensor:
        raise InputError(
            f"this folder is a fine-tuned {self.task['type']} model: it has no masked-LM head, so it cannot "
            "fill masks or score sentences; use classify/tag (masklm predict), or the pretrained folder"
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.base.encode(input_ids, attention_mask)
        return self.head(hidden, attention_mask)


def build_finetuned(base: nn.Module, task: dict[str, Any]) -> FineTunedModel:
    """A fine-tunable model: ``base``'s encoder (shared, not copied) and a fresh head for ``task``."""
    if isinstance(base, FineTunedModel):  # fine-tune a fine-tuned model again: keep its encoder only
        base = base.base
    return FineTunedModel(base, check_task(task, "task"))

