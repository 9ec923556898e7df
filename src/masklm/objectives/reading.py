"""How a trained model is read: the one place that turns a folder's objective names into behaviour.

Weights trained with GPT-BERT's ``mntp`` predict a masked token j at position j - 1; weights trained with
``mlm`` or ``diffusion`` predict it at j; ``clm`` alone gives a causal LM whose logits at i score token
i + 1 (research/ltg_bert.md §6). Which sentence score fits, whether left-to-right decoding suits, and
which held-out evaluators run all follow from the same names. Each objective class (listed in
``objectives.registry``) declares its own ``Reading`` (``objectives.base``); ``TrainedAs`` combines the
declarations of a model's objectives, and fill-mask, scoring, generation, import-ltg and the trainer's
evaluation ask it instead of testing names.

The masked objectives decide how masks are read (the one with the largest shift wins: a model trained
with both ``mlm`` and ``mntp`` saw next-token labels); a model trained only causally is read as a
causal LM. Unknown objectives (a folder without ``training_args.json``, e.g. imported weights) are read
at the mask, every metric is allowed without a warning, and causal decoding is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from masklm.objectives.base import Reading
from masklm.objectives.registry import OBJECTIVES

READINGS: dict[str, Reading] = {name: cls.reading for name, cls in OBJECTIVES.items()}
EVALUATORS = ("mlm", "causal", "diffusion")
_CAUSAL_RANK = {"no": 0, "untrained": 1, "trained": 2}


@dataclass(frozen=True)
class TrainedAs:
    """What a model's objective names say about reading it. ``objectives`` is empty when unknown."""

    objectives: tuple[str, ...] = ()

    @classmethod
    def from_names(cls, names: Sequence[str] | None) -> TrainedAs:
        """Known names only (an unknown one in ``training_args.json`` is ignored, as if never trained)."""
        return cls(tuple(n for n in dict.fromkeys(names or ()) if n in READINGS))

    @property
    def known(self) -> bool:
        return bool(self.objectives)

    def _readings(self) -> list[Reading]:
        return [READINGS[n] for n in self.objectives]

    def _lead(self) -> Reading | None:
        """The reading that decides mask positions and the default metric."""
        readings = self._readings()
        masked = [r for r in readings if r.masked]
        return max(masked or readings, key=lambda r: r.shift, default=None)

    @property
    def mask_shift(self) -> int:
        """1 when a masked token's prediction is read one position to its left, else 0."""
        lead = self._lead()
        return lead.shift if lead else 0

    @property
    def default_metric(self) -> str:
        """The sentence score that matches how the model was trained (``pll`` when unknown)."""
        lead = self._lead()
        return lead.metrics[0] if lead else "pll"

    def fits(self, metric: str) -> bool:
        """Whether ``metric`` reads the model as it was trained (always True when unknown)."""
        declared = {m for r in READINGS.values() for m in r.metrics}
        if not self.known or metric not in declared:
            return True
        return any(metric in r.metrics for r in self._readings())

    @property
    def causal_decoding(self) -> str:
        """``trained``, ``untrained`` (left-to-right runs, poorly) or ``no`` (refuse)."""
        return max((r.causal_decoding for r in self._readings()), key=_CAUSAL_RANK.__getitem__, default="no")

    @property
    def evaluators(self) -> tuple[str, ...]:
        """Held-out evaluators to run, in ``EVALUATORS`` order (``mlm`` always)."""
        wanted = {"mlm"} | {e for r in self._readings() for e in r.evaluators}
        return tuple(e for e in EVALUATORS if e in wanted)

    def describe(self) -> str:
        return ", ".join(sorted(self.objectives)) if self.known else "unknown objectives (no training_args.json)"


def objectives_reading_at(shift: int, arch: str) -> list[str]:
    """Objective names for weights whose masks read best at ``shift`` (import-ltg's loss check): the masked
    objective with that shift, plus ``clm`` for GPT-BERT weights, whose published recipe mixes the two."""
    name = next(n for n, r in READINGS.items() if r.masked and r.shift == shift)  # mlm before diffusion
    return [name, "clm"] if shift and arch == "gpt-bert" else [name]


__all__ = ["EVALUATORS", "READINGS", "TrainedAs", "objectives_reading_at"]
