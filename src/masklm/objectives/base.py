"""The objective contract and the loss every objective shares.

An objective sees a packed batch (``input_ids``, ``attention_mask``, ``document_ids``, ``word_starts``,
all ``[B, T]``) plus the global row indices, the epoch and the mask rate of this step, and returns an
``ObjectiveBatch``: the model inputs, the labels (-100 where nothing is predicted), whether attention
is causal, and how its loss is weighted and normalised. It knows nothing about architectures. Each
objective class names itself (``name``), says how weights trained with it are read (``reading``) and
builds itself from the run's options (``from_config``); ``objectives.registry`` lists them.

The model returns logits only where ``labels != -100`` (``[N, V]``, row-major), and
``objective_loss(logits, batch)`` turns them into ``(loss_sum, denominator)``. MLM, CLM and MNTP are
plain token means (weights None, denominator = number of targets); masked diffusion weights each
target by 1/t, divides by every maskable token and removes [MASK] from the softmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from masklm.data.masking import IGNORE_INDEX
from masklm.models.heads import cross_entropy_sum
from masklm.tokenizer import Tokenizer


@dataclass
class ObjectiveBatch:
    """What an objective hands to the model and the loss.

    input_ids [B, T], labels [B, T] (-100 = not predicted), attention_mask [B, T] (1 = token),
    document_ids [B, T] (-1 at pads), or None when every row holds one document (the trainer drops them
    then, so attention needs no document mask), causal: attention mode.
    weights [N]: per-target loss weights in the row-major order of ``labels != -100``; None = all 1.
    loss_denominator: what the loss sum is divided by; None = the number of targets N.
    excluded_token_id: a token whose logit is set to -inf before the softmax (MDLM's "zero masking
        probabilities": the denoiser may never predict [MASK]); None = none.
    objective: the name of the objective that made the batch (for logging and per-objective means).
    mask_rate: the share of tokens the objective masked at; None when it does not mask by a rate.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    document_ids: torch.Tensor | None
    causal: bool = False
    weights: torch.Tensor | None = None
    loss_denominator: float | None = None
    excluded_token_id: int | None = None
    objective: str = ""
    mask_rate: float | None = None


@dataclass(frozen=True)
class Reading:
    """How weights trained with one objective are read afterwards (``objectives.reading`` combines them).

    masked:          the objective feeds masked inputs, so its outputs predict masked tokens.
    shift:           the prediction for token j sits at position j - shift (1: GPT-BERT's MNTP and CLM).
    metrics:         sentence scores that read the model the way this objective trained it, best first.
    causal_decoding: "trained" (causal attention and next-token labels), "untrained" (next-token labels
                     but bidirectional attention: left-to-right decoding runs, poorly) or "no".
    evaluators:      held-out measures of this objective (``training.evaluate``): mlm, causal, diffusion.
    """

    masked: bool
    shift: int
    metrics: tuple[str, ...]
    causal_decoding: str
    evaluators: tuple[str, ...]


@dataclass(frozen=True)
class ObjectiveOptions:
    """What the objectives of a run are built from (``TrainConfig``'s objective fields).

    rate: the mask rate a call uses when it names none (the trainer always names its scheduled rate).
    split: mask/random/keep shares of the selected tokens. masking: token, whole-word or span.
    seed: the key of every mask. diffusion_eps: the smallest masking probability t of MDLM.
    """

    rate: float = 0.15
    split: Sequence[float] = (0.8, 0.1, 0.1)
    masking: str = "token"
    seed: int = 0
    diffusion_eps: float = 1e-3


class Objective(Protocol):
    """``objective(batch, rows, epoch, rate=...) -> ObjectiveBatch``; ``rows`` [B] are global row indices.

    ``rate`` is the share of tokens to mask at this step (the trainer's mask-rate schedule); objectives
    that do not mask by a rate accept it and ignore it, so every objective is called the same way.
    """

    name: ClassVar[str]
    reading: ClassVar[Reading]

    @classmethod
    def from_config(cls, options: ObjectiveOptions, tokenizer: Tokenizer) -> Objective: ...

    def __call__(self, batch: dict[str, torch.Tensor], rows: Sequence[int], epoch: int,
                 rate: float | None = None) -> ObjectiveBatch: ...


def batch_denominator(batch: ObjectiveBatch) -> float:
    """The normaliser of one micro-batch: ``loss_denominator``, or the number of targets."""
    if batch.loss_denominator is not None:
        return float(batch.loss_denominator)
    return float((batch.labels != IGNORE_INDEX).sum())


def objective_loss(logits: torch.Tensor, batch: ObjectiveBatch) -> tuple[torch.Tensor, float]:
    """Sparse logits ``[N, V]`` (at ``batch.labels != -100``, row-major) -> (loss sum (0-dim fp32), denominator).

    loss sum = sum_n weights[n] * CE(logits[n], target[n]), with ``excluded_token_id``'s logit at -inf
    first. The trainer divides by the denominator summed over micro-batches (and ranks) of the same
    objective; see ``step_loss_scales``.
    """
    target = batch.labels[batch.labels != IGNORE_INDEX]  # [N]
    return cross_entropy_sum(logits, target, batch.weights, batch.excluded_token_id), batch_denominator(batch)


def step_loss_scales(objectives: Sequence[str], denominators: Sequence[float]) -> list[float]:
    """Scale of each micro-batch's loss sum in one optimizer step.

    objectives[a]: the objective of micro-batch a; denominators[a]: its denominator summed over ranks.
    The step loss is sum_a scale[a] * loss_sum[a] = sum_o share(o) * (sum_{a in o} loss_sum[a] /
    sum_{a in o} denominators[a]), with share(o) = (micro-batches of o) / (all micro-batches): each
    objective is its own token mean, mixed in the ratio of micro-batches, as GPT-BERT's 15:1 split by
    rank averages per-GPU means. With one objective it is the plain global token mean.
    """
    if len(objectives) != len(denominators):
        raise ValueError("one denominator per micro-batch")
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    for name, den in zip(objectives, denominators):
        totals[name] = totals.get(name, 0.0) + float(den)
        counts[name] = counts.get(name, 0) + 1
    n = len(objectives)
    return [counts[name] / n / max(totals[name], 1.0) for name in objectives]


def next_token_labels(targets: torch.Tensor, attention_mask: torch.Tensor,
                      document_ids: torch.Tensor) -> torch.Tensor:
    """Shift labels left by one inside documents: out[:, i] = targets[:, i+1] -> ``[B, T]`` long.

    -100 where i or i+1 is a pad, where i+1 starts another document, at the end of the row, and
    wherever ``targets[:, i+1]`` is -100. So the output at position i predicts token i+1, never across
    a document boundary.
    """
    out = torch.full_like(targets, IGNORE_INDEX)
    same_doc = (document_ids[:, 1:] == document_ids[:, :-1]) & (document_ids[:, 1:] >= 0)
    same_doc &= attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    out[:, :-1] = torch.where(same_doc, targets[:, 1:], torch.full_like(targets[:, 1:], IGNORE_INDEX))
    return out


def has_predecessor(attention_mask: torch.Tensor, document_ids: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` bool: token i is real and token i-1 is a real token of the same document."""
    out = torch.zeros_like(attention_mask, dtype=torch.bool)
    out[:, 1:] = (document_ids[:, 1:] == document_ids[:, :-1]) & (document_ids[:, 1:] >= 0)
    out[:, 1:] &= attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    return out
