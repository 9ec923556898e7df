"""Schedules over training progress: the learning rate (warmup, decay, cooldown and the LTG-BERT/GPT-BERT
recipes), the mask rate and the sequence length (research/ltg_bert.md §5.3, §5.4, §6).

Every schedule is a pure function of (step, total steps): it holds only its settings, and the trainer
passes the run's length at every call. So a resumed run reproduces it exactly without saving any
schedule state, and a run whose length changes mid-way (a time limit shortens it after its first
steps) simply passes the new length from then on. ``step`` counts the optimizer steps already taken.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from masklm.errors import ConfigError

# ---- learning rate ------------------------------------------------------------------------------


def steps_of(length: int | float, total_steps: int) -> int:
    """A warmup or cooldown given as a fraction (< 1) of the run, or as a number of steps."""
    if isinstance(length, float) and length < 1.0:
        return int(round(length * total_steps))
    return int(length)


@dataclass(frozen=True)
class LRSchedule:
    """Linear warmup, then cosine, linear or constant decay down to ``min_ratio`` of the peak, then an
    optional linear cooldown to 0 over the last ``cooldown`` of the run (GPT-BERT's recipe).

    ``warmup`` and ``cooldown`` are fractions (< 1) of the run or numbers of steps, read against the
    ``total`` of each call. The decay ends where the cooldown begins, so the curve is continuous (the
    reference's cosine runs to the very end and is cut by the cooldown, a jump of < 0.001x the peak there).
    """

    kind: str
    warmup: int | float = 0
    min_ratio: float = 0.0
    cooldown: int | float = 0

    def warmup_steps(self, total: int) -> int:
        return max(0, steps_of(self.warmup, max(1, total)))

    def cooldown_steps(self, total: int) -> int:
        total = max(1, total)
        return min(steps_of(self.cooldown, total), total - self.warmup_steps(total))

    def __call__(self, step: int, total: int) -> float:
        """The multiplier of the peak LR for the step after ``step`` steps of a ``total``-step run."""
        total = max(1, total)
        warmup = self.warmup_steps(total)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        cooldown = max(0, self.cooldown_steps(total))
        floor = 1.0 if self.kind == "constant" else self.min_ratio
        decay_end = total - cooldown
        if cooldown and step >= decay_end:
            # From the decay's floor down to 0 at total; the last step (total - 1) stays above 0.
            return floor * (total - min(step, total)) / cooldown
        if self.kind == "constant":
            return 1.0
        span = max(1, decay_end - warmup)
        progress = min(1.0, (step - warmup) / span)
        if self.kind == "linear":
            decay = 1.0 - progress
        else:
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_ratio + (1.0 - self.min_ratio) * decay


@dataclass(frozen=True)
class LRRecipe:
    """A named LR schedule: decay shape, warmup and cooldown (fractions of the run), floor."""

    kind: str
    warmup: float
    min_ratio: float
    cooldown: float = 0.0


# LTG-BERT: warmup 1.6%, cosine to 0.1x. GPT-BERT: the same, then linear from 0.1x to 0 over the last 1.6%.
LR_RECIPES: dict[str, LRRecipe] = {
    "ltg-bert": LRRecipe("cosine", warmup=0.016, min_ratio=0.1),
    "gpt-bert": LRRecipe("cosine", warmup=0.016, min_ratio=0.1, cooldown=0.016),
}
LR_KINDS = ("cosine", "linear", "constant", *LR_RECIPES)


def build_lr_schedule(kind: str, warmup: int | float = 0.06, min_ratio: float = 0.0,
                      cooldown: int | float = 0) -> LRSchedule:
    """An :class:`LRSchedule` of a plain kind (cosine, linear, constant: ``warmup``, ``min_ratio`` and
    ``cooldown`` apply), or of a named recipe in ``LR_RECIPES``, which fixes all three itself."""
    if kind in LR_RECIPES:
        recipe = LR_RECIPES[kind]
        return LRSchedule(recipe.kind, recipe.warmup, recipe.min_ratio, recipe.cooldown)
    if kind not in LR_KINDS:
        raise ConfigError(f"unknown LR schedule {kind!r}; choose one of: {', '.join(LR_KINDS)}")
    return LRSchedule(kind, warmup, min_ratio, cooldown)


# ---- mask rate ----------------------------------------------------------------------------------

_RATE_RANGE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*->\s*([0-9]*\.?[0-9]+)\s*$")


@dataclass(frozen=True)
class MaskRateSchedule:
    """Mask rate moving linearly from ``start`` at step 0 to ``end`` at step ``total`` (GPT-BERT:
    0.30 -> 0.15, computed like the reference's ``start + (end - start) * step / max_steps``)."""

    start: float
    end: float

    def __call__(self, step: int, total: int) -> float:
        progress = min(1.0, max(0.0, step / max(1, total)))
        return self.start + (self.end - self.start) * progress

    @classmethod
    def parse(cls, value: float | str) -> MaskRateSchedule:
        """From a rate (``0.15``, constant) or a range string (``"0.30->0.15"``)."""
        return cls(*parse_mask_rate(value))


def parse_mask_rate(value: float | str) -> tuple[float, float]:
    """``0.15`` or ``"0.15"`` -> (0.15, 0.15); ``"0.30->0.15"`` -> (0.30, 0.15). Rates are in (0, 1)."""
    if isinstance(value, bool):
        raise ConfigError(f"mask_rate must be a number in (0, 1) or a range like '0.30->0.15', got {value!r}")
    if isinstance(value, (int, float)):
        start = end = float(value)
    else:
        text = str(value)
        match = _RATE_RANGE.match(text)
        try:
            start, end = (float(match[1]), float(match[2])) if match else (float(text),) * 2
        except ValueError:
            raise ConfigError(
                f"mask_rate must be a number in (0, 1) or a range like '0.30->0.15', got {value!r}"
            ) from None
    for rate in (start, end):
        if not (0.0 < rate < 1.0) or math.isnan(rate):
            raise ConfigError(f"mask_rate values must be in (0, 1), got {value!r}")
    return start, end


# ---- sequence length and batch ------------------------------------------------------------------


@dataclass(frozen=True)
class SeqLenPhase:
    start: float           # share of the run at which the phase begins, in [0, 1)
    seq_len: int           # tokens per row in this phase
    batch_fraction: float  # rows per step, as a share of the configured batch

    def batch_size(self, base: int) -> int:
        """Rows per micro-batch in this phase: ``base * batch_fraction``, rounded, at least 1."""
        return max(1, int(base * self.batch_fraction + 0.5))


# (start, seq_len, batch_fraction) per phase at a base length of 128; presets scale seq_len with the base.
SEQ_LEN_PRESETS: dict[str, tuple[tuple[float, int, float], ...]] = {
    "constant": ((0.0, 128, 1.0),),
    # LTG-BERT: 128 tokens for 90% of the steps, then 512 tokens at a quarter of the batch.
    "ltg-bert": ((0.0, 128, 1.0), (0.9, 512, 0.25)),
    # GPT-BERT: 128, then 256 at half the batch from 70%, then 512 at a quarter from 90%.
    "gpt-bert": ((0.0, 128, 1.0), (0.7, 256, 0.5), (0.9, 512, 0.25)),
}


class SeqLenSchedule:
    """Sequence-length phases by progress: ``phase_index(step, total)`` picks one of ``phases``.

    Phase i runs from step ``ceil(start_i * total)`` (see :meth:`boundaries`) up to the next phase.
    The reference switches at epoch boundaries once ``(step + 1) / total`` passes the threshold; here
    the switch is per step, at exactly the named share of the run. ``training.row_order.RowOrder``
    packs the rows of each phase and reads them.
    """

    def __init__(self, phases: Sequence[tuple[float, int, float] | SeqLenPhase]) -> None:
        self.phases = tuple(p if isinstance(p, SeqLenPhase) else SeqLenPhase(float(p[0]), int(p[1]), float(p[2]))
                            for p in phases)
        if not self.phases or self.phases[0].start != 0.0:
            raise ConfigError("a sequence-length schedule needs phases, the first starting at 0.0")
        for before, after in zip(self.phases, self.phases[1:]):
            if not before.start < after.start < 1.0:
                raise ConfigError(f"sequence-length phases must start in increasing order within [0, 1), "
                                  f"got {before.start} then {after.start}")
        for p in self.phases:
            if p.seq_len < 1 or not 0.0 < p.batch_fraction <= 1.0:
                raise ConfigError(f"a sequence-length phase needs seq_len >= 1 and a batch fraction in (0, 1], "
                                  f"got seq_len {p.seq_len}, fraction {p.batch_fraction}")

    @classmethod
    def preset(cls, name: str, base_seq_len: int = 128) -> SeqLenSchedule:
        """A named schedule from ``SEQ_LEN_PRESETS``, lengths scaled by ``base_seq_len / 128``."""
        if name not in SEQ_LEN_PRESETS:
            raise ConfigError(f"unknown sequence-length schedule {name!r}; choose one of: {', '.join(SEQ_LEN_PRESETS)}")
        return cls([(start, seq_len * base_seq_len // 128, fraction)
                    for start, seq_len, fraction in SEQ_LEN_PRESETS[name]])

    def boundaries(self, total_steps: int) -> list[int]:
        """The first step of each phase (a phase whose first step is >= total never runs)."""
        # The epsilon keeps float products such as 0.3 * 10 = 3.0000000000000004 on their integer.
        return [max(0, math.ceil(p.start * total_steps - 1e-9)) for p in self.phases]

    def phase_index(self, step: int, total_steps: int) -> int:
        index = 0
        for i, first in enumerate(self.boundaries(total_steps)):
            if step >= first:
                index = i
        return index

    @property
    def max_seq_len(self) -> int:
        return max(p.seq_len for p in self.phases)
