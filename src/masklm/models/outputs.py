"""What a model's forward pass returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MaskedLMOutput:
    """Output of ``model(input_ids, ...)``; every architecture keeps the same shapes.

    loss:          mean cross-entropy over positions with ``labels != -100``; None without labels.
    logits:        ``[N_selected, V]`` with labels (rows in row-major order of the selected positions),
                   else ``[B, T, V]``.
    hidden_states: without labels, the final encoder output ``[B, T, D]``; with labels ``[N_selected, D]``,
                   the rows the head read to give ``logits``. Rows, not ``[B, T, D]``, because BERT runs its
                   last layer only at the selected positions (``BertModel.forward_at``): the full tensor
                   would cost that layer everywhere. ``model.encode(...)`` always gives ``[B, T, D]``.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor
    hidden_states: torch.Tensor
