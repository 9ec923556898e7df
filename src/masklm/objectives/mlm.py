"""BERT's masked-LM objective: mask a share of the tokens, predict the originals at their own positions.

Which tokens are chosen (token-level, whole-word or LTG-BERT's spans), the mask/random/keep split and
the determinism per (seed, epoch, row) belong to ``data.masking.mask_tokens``; this class binds those
settings and hands the masked rows to the model with bidirectional attention (Devlin et al. 2019;
research/ltg_bert.md §5.3). GPT-BERT's MNTP (``objectives.mntp``) masks the same way and only shifts
the labels, so it subclasses this one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from masklm.data.masking import mask_tokens
from masklm.objectives.base import ObjectiveBatch, ObjectiveOptions, Reading
from masklm.tokenizer import Tokenizer


class MaskedLM:
    """``obj(batch, rows, epoch, rate=...) -> ObjectiveBatch``: masked inputs, labels at the masked tokens."""

    name = "mlm"
    reading = Reading(masked=True, shift=0, metrics=("pll", "pll-word-l2r"), causal_decoding="no",
                      evaluators=("mlm",))

    def __init__(self, tokenizer: Tokenizer, rate: float = 0.15, split: Sequence[float] = (0.8, 0.1, 0.1),
                 strategy: str = "token", seed: int = 0) -> None:
        self.tokenizer = tokenizer
        self.rate = rate  # for calls that name no rate; the trainer names its scheduled one
        self.split = tuple(split)
        self.strategy = strategy  # token, whole-word or span
        self.seed = seed

    @classmethod
    def from_config(cls, options: ObjectiveOptions, tokenizer: Tokenizer) -> MaskedLM:
        return cls(tokenizer, rate=options.rate, split=options.split, strategy=options.masking, seed=options.seed)

    def mask(self, batch: dict[str, torch.Tensor], rows: Sequence[int], epoch: int, rate: float,
             selectable: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask ``batch["input_ids"]`` ``[B, T]`` among the ``selectable`` tokens ``[B, T]`` (1 = may be chosen)
        -> (inputs ``[B, T]``, labels ``[B, T]``: the original token where chosen, -100 elsewhere)."""
        tok = self.tokenizer
        return mask_tokens(batch["input_ids"], rows=rows, seed=self.seed, epoch=epoch, rate=rate, split=self.split,
                           mask_id=tok.mask_id, vocab_size=tok.vocab_size, special_ids=tok.special_ids,
                           attention_mask=selectable, strategy=self.strategy, word_starts=batch.get("word_starts"))

    def __call__(self, batch: dict[str, torch.Tensor], rows: Sequence[int], epoch: int,
                 rate: float | None = None) -> ObjectiveBatch:
        rate = self.rate if rate is None else rate
        inputs, labels = self.mask(batch, rows, epoch, rate, batch["attention_mask"])
        return ObjectiveBatch(inputs, labels, batch["attention_mask"], batch["document_ids"], causal=False,
                              objective=self.name, mask_rate=rate)
