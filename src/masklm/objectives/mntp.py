"""GPT-BERT's masked next-token prediction (MNTP).

The input is corrupted like MLM (``mask_tokens``: token or whole-word, 80/10/10), attention is
bidirectional, and the labels are shifted left by one: the output at position i predicts the
*original* token at i+1, and only where i+1 was selected. Causal LM has the same alignment (output i
predicts token i+1), so one head and one set of weights serve both objectives; only the attention
mask differs (research/ltg_bert.md §6).

Only tokens that have a predecessor in their own document (in this row) may be selected: a selected
token at the start of a row or of a document would have no position to be predicted from, so it
would be corrupted without ever being a target. Excluding them keeps the realised target rate at
``rate`` of the predictable tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from masklm.objectives.base import ObjectiveBatch, Reading, has_predecessor, next_token_labels
from masklm.objectives.mlm import MaskedLM


class MaskedNextToken(MaskedLM):
    """``obj(batch, rows, epoch, rate=...) -> ObjectiveBatch``: MLM corruption, bidirectional, labels[i] = orig[i+1].

    Takes ``MaskedLM``'s settings (rate, 80/10/10 split, strategy, seed). Deterministic per
    (seed, epoch, row) through ``mask_tokens``.
    """

    name = "mntp"
    reading = Reading(masked=True, shift=1, metrics=("mntp",), causal_decoding="untrained",
                      evaluators=("mlm", "causal"))

    def __call__(self, batch: dict[str, torch.Tensor], rows: Sequence[int], epoch: int,
                 rate: float | None = None) -> ObjectiveBatch:
        rate = self.rate if rate is None else rate
        attention, docs = batch["attention_mask"], batch["document_ids"]
        selectable = has_predecessor(attention, docs)  # [B, T]
        inputs, masked_labels = self.mask(batch, rows, epoch, rate, selectable.long())
        labels = next_token_labels(masked_labels, attention, docs)  # [B, T]: orig[i+1] where i+1 selected
        return ObjectiveBatch(inputs, labels, attention, docs, causal=False, objective=self.name, mask_rate=rate)
