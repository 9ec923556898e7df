"""Causal language modelling: clean inputs, causal attention, the output at i predicts token i+1.

Used alone, in AntLM's CLM phases, and as the 1-in-16 partner of MNTP in GPT-BERT. Labels never
cross a document boundary of a packed row: the last token of a document does not predict the first
token of the next one (GPT-BERT sets the label at ``<s>`` to -100 for the same reason), and nothing
predicts past the end of the row. The model's tied MLM head serves as the LM head. Its held-out
measure is ``training.evaluate.evaluate_causal``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from masklm.objectives.base import ObjectiveBatch, ObjectiveOptions, Reading, next_token_labels
from masklm.tokenizer import Tokenizer


class CausalLM:
    """``obj(batch, rows, epoch, rate=None) -> ObjectiveBatch`` with ``causal=True`` and next-token labels.

    Deterministic and free of randomness: ``rows``, ``epoch`` and ``rate`` are accepted for the common
    contract and ignored (nothing is masked).
    """

    name = "clm"
    reading = Reading(masked=False, shift=1, metrics=("causal",), causal_decoding="trained",
                      evaluators=("mlm", "causal"))

    def __init__(self, tokenizer: Tokenizer | None = None) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def from_config(cls, options: ObjectiveOptions, tokenizer: Tokenizer) -> CausalLM:
        return cls(tokenizer)

    def __call__(self, batch: dict[str, torch.Tensor], rows: Sequence[int] | None = None, epoch: int = 0,
                 rate: float | None = None) -> ObjectiveBatch:
        ids, attention, docs = batch["input_ids"], batch["attention_mask"], batch["document_ids"]
        labels = next_token_labels(ids, attention, docs)  # [B, T]
        return ObjectiveBatch(ids, labels, attention, docs, causal=True, objective=self.name)
