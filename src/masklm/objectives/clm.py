"""Causal language modelling: clean inputs, causal attention, the output at i predicts token i+1.

Used alone, in AntLM's CLM phases, and as the 1-in-16 partner of MNTP in GPT-BERT. Labels never
cross a document boundary of a packed row: the last token of a document does not predict the first
token of the next one (GPT-BERT sets the label at ``<s>`` to -100 for the same reason), and nothing
predicts past the end of the row. The model's tied MLM head serves as the LM head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from masklm.data.masking import IGNORE_INDEX
from masklm.data.packing import PackedRows
from masklm.objectives.base import ObjectiveBatch, Reading, next_token_labels
from masklm.tokenizer import Tokenizer


class CausalLM:
    """``obj(batch, rows, epoch) -> ObjectiveBatch`` with ``causal=True`` and next-token labels.

    Deterministic and free of randomness: ``rows`` and ``epoch`` are accepted for the common contract.
    """

    name = "clm"
    reading = Reading(masked=False, shift=1, metrics=("causal",), causal_decoding="trained",
                      evaluators=("mlm", "causal"))

    def __init__(self, tokenizer: Tokenizer | None = None) -> None:
        self.tokenizer = tokenizer

    def __call__(self, batch: dict[str, torch.Tensor], rows: Sequence[int] | None = None,
                 epoch: int = 0) -> ObjectiveBatch:
        ids, attention, docs = batch["input_ids"], batch["attention_mask"], batch["document_ids"]
        labels = next_token_labels(ids, attention, docs)  # [B, T]
        return ObjectiveBatch(ids, labels, attention, docs, causal=True, objective=self.name)


@torch.no_grad()
def evaluate_causal(model: nn.Module, rows: PackedRows, tok: Tokenizer | None = None, *, batch_size: int,
                    max_batches: int) -> dict[str, float]:
    """Causal next-token loss over the first ``batch_size * max_batches`` held-out rows.

    -> {"causal_loss": mean nats per predicted token, "causal_ppl": exp of it, "tokens": N predicted}.
    As in training, the first token of each row and of each document is not predicted: nothing in
    its row and document comes before it.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    objective = CausalLM(tok)
    loss_sum, count = 0.0, 0
    n_rows = min(len(rows), batch_size * max_batches)
    for lo in range(0, n_rows, batch_size):
        row_ids = list(range(lo, min(lo + batch_size, n_rows)))
        batch = {k: v.to(device) for k, v in rows.batch(row_ids).items()}
        ob = objective(batch, row_ids, 0)
        selected = ob.labels != IGNORE_INDEX
        if not selected.any():
            continue
        out = model(ob.input_ids, attention_mask=ob.attention_mask, labels=ob.labels, causal=True,
                    document_ids=ob.document_ids)
        loss_sum += F.cross_entropy(out.logits.float(), ob.labels[selected], reduction="sum").item()
        count += int(selected.sum())
    model.train(was_training)
    loss = loss_sum / max(count, 1)
    return {"causal_loss": loss, "causal_ppl": math.exp(min(loss, 700.0)), "tokens": count}
