"""What a model's forward pass returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MaskedLMOutput:
    """Output of ``model(input_ids, ...)``.

    loss:          mean cross-entropy over positions with ``labels != -100``; None without labels.
    logits:        ``[N_selected, V]`` with labels (rows in row-major order of the selected positions),
                   else ``[B, T, V]``.
    hidden_states: final encoder output ``[B, T, D]``; with labels, models that run their last layer only
                   where the head reads (BERT) give ``[N_selected, D]``, the rows of ``logits``.
                   ``model.encode(...)`` always gives ``[B, T, D]``.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor
    hidden_states: torch.Tensor
