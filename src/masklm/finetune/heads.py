"""Task heads on a pretrained encoder, and fine-tuned model folders.

A fine-tuned model is the pretrained encoder with a task head attached, as Hugging Face's
``BertForSequenceClassification`` (``bert`` + classifier) and LTG's own task models (``LtgBertModel``
subclasses with a ``head``) are built. The encoder keeps the names it has in the pretrained folder (BERT:
``bert.*``; LTG-BERT / GPT-BERT: ``embedding.*`` and ``transformer.*``), so its weights move over by name,
and the head sits under ``head.*``; the masked-LM head is left out. Its ``config.json`` is the encoder's
plus a ``task`` block::

    "task": {"type": "classification" | "regression" | "tagging" | "question-answering", "labels": [...],
             "num_labels": N, "id2label": {"0": ...}, "pooling": "mean" | "cls",
             "windows": {"stride": S, "pool": "mean" | "max"} (when trained on windows), ...}

Sequence heads (classification, regression) pool the final hidden states (``models.heads.pool``), by
default the **mean** over the non-padding tokens ([CLS] and [SEP] included; ``pooling="cls"`` takes the
first token instead), then dropout -> dense D->D -> tanh -> dropout -> linear D->num_labels. The tagging
head is dropout -> linear D->num_tags on every token; a word's tag is read at its **first sub-token**.
Question answering uses the same token head with two outputs, the start and end logits of the answer
span (Hugging Face's ``qa_outputs``; ``masklm.hf.bert.export_bert`` writes it under that name).
A BERT folder's config says ``architectures: ["BertModel"]``, so ``transformers.AutoModel`` loads its
encoder (the head is ignored); ``masklm export-hf`` writes the head under the names of the transformers
class that computes the same function (``masklm.hf.bert._hf_head``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from masklm.config import ModelConfig
from masklm.errors import ConfigError, InputError, ModelDirError
from masklm.models.bert import BertModel
from masklm.models.heads import POOLINGS, pool
from masklm.models.ltg_bert import LtgBertModel

TASKS = ("classification", "regression", "tagging", "question-answering")
TOKEN_TASKS = ("tagging", "question-answering")  # a logit row per token: TokenHead
QA_LABELS = ["start", "end"]


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
    if task["type"] == "question-answering" and labels != QA_LABELS:
        raise ModelDirError(f"{where}: a question-answering task's 'labels' must be {QA_LABELS}")
    if task["type"] not in TOKEN_TASKS and task.get("pooling", "mean") not in POOLINGS:
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
        x = torch.tanh(self.dense(self.dropout(pool(hidden, attention_mask, self.pooling))))
        return self.out(self.dropout(x))


class TokenHead(nn.Module):
    """Per-token tag logits ``[B, T, N]``."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(hidden))


def task_head(config: FineTunedConfig) -> SequenceHead | TokenHead:
    """A freshly initialised head for ``config.task``: N(0, initializer_range) weights, zero biases."""
    task, D = config.task, config.hidden_size
    n, drop = int(task["num_labels"]), config.hidden_dropout_prob
    head = (TokenHead(D, n, drop) if task["type"] in TOKEN_TASKS
            else SequenceHead(D, n, task.get("pooling", "mean"), drop))
    std = config.initializer_range or 0.02
    for module in head.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, std)
            nn.init.zeros_(module.bias)
    return head


class FineTunedModel(nn.Module):
    """A pretrained encoder with a task head: ``model(input_ids, attention_mask)`` gives the task logits
    (``[B, N]`` for sequences, ``[B, T, N]`` for tagging). One class per encoder (``BertForTask``,
    ``LtgBertForTask``) places the encoder under its pretrained names; this base holds what they share.

    ``encode`` is the encoder's, so embeddings still work; ``predict`` (the MLM head) raises InputError:
    fill-mask and scoring need a pretrained, not a fine-tuned, folder.
    """

    config: FineTunedConfig
    head: nn.Module

    @property
    def task(self) -> dict[str, Any]:
        return self.config.task

    def predict(self, hidden: torch.Tensor) -> torch.Tensor:
        raise InputError(
            f"this folder is a fine-tuned {self.task['type']} model: it has no masked-LM head, so it cannot "
            "fill masks or score sentences; use classify/tag (masklm predict), or the pretrained folder"
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.head(self.encode(input_ids, attention_mask), attention_mask)


class BertForTask(FineTunedModel):
    """``bert`` (the BERT encoder) + ``head``."""

    def __init__(self, config: FineTunedConfig, head: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.head = head

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               causal: bool = False, document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's final hidden states ``[B, T, D]``."""
        return self.bert(input_ids, attention_mask, causal, document_ids)


class LtgBertForTask(FineTunedModel, LtgBertModel):
    """An ``LtgBertModel`` (``embedding`` + ``transformer``, and its ``encode``) + ``head``."""

    def __init__(self, config: FineTunedConfig, head: nn.Module) -> None:
        super().__init__(config)  # FineTunedModel has no __init__: this is LtgBertModel's
        self.head = head


TASK_MODELS: dict[str, type[FineTunedModel]] = {"bert": BertForTask, "ltg": LtgBertForTask}


def build_finetuned(base: nn.Module, task: dict[str, Any]) -> FineTunedModel:
    """A fine-tunable model: ``base``'s encoder weights (shared, not copied) and a fresh head for ``task``.

    ``base`` is a masked-LM model or a fine-tuned one (fine-tuning again keeps only its encoder). The
    encoder's weights are ``base``'s tensors of the same names; its other weights (heads) are left out.
    """
    fields = {k: getattr(base.config, k) for k in ModelConfig.__dataclass_fields__}
    config = FineTunedConfig(**fields, task=check_task(task, "task"))
    head = task_head(config)
    # meta: no memory and no random draws for the encoder, whose weights come from base next
    with torch.device("meta"):
        model = TASK_MODELS[config.family](config, head)
    encoder = [name for name in model.state_dict() if not name.startswith("head.")]
    state = base.state_dict()
    missing = [name for name in encoder if name not in state]
    if missing:
        raise ModelDirError(f"the model has no weights {', '.join(missing[:3])}; masklm cannot fine-tune it")
    model.load_state_dict({name: state[name] for name in encoder}, strict=False, assign=True)
    return model

