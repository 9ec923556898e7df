"""Which objective trains each micro-batch: one objective, an AntLM schedule of phases, or a mix.

``--objective`` takes one of three forms:

- ``mlm``: one objective for the whole run.
- ``clm:4,mlm:16,clm:4``: AntLM phases, run in order; the lengths are in ``--schedule-unit``
  (epochs, steps or tokens). Phase i covers positions [start_i, start_i + length_i); after the last
  phase ends the last objective continues, and ``total_length`` tells the trainer how long the
  schedule is (and the run, when no --max-steps/--epochs is given).
- ``mntp=15,clm=1``: a mix across micro-batches in the ratio of the weights. Smooth weighted
  round-robin (nginx's) over the global micro-batch index gives a periodic sequence whose period
  holds each objective exactly ``weight`` times (after dividing by the gcd), spread out as evenly as
  possible; so every run of sum(weights) consecutive micro-batches holds exactly ``weight`` of each.

Everything is a pure function of (step, micro index, epoch, tokens seen), so resuming a run gives
the same objectives, and every rank picks the same objective for the same micro-batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property, reduce

from masklm.errors import ConfigError
from masklm.objectives.base import Objective, ObjectiveOptions
from masklm.objectives.registry import OBJECTIVE_NAMES, build_objective
from masklm.tokenizer import Tokenizer

UNITS = ("epochs", "steps", "tokens")
MAX_MIX_PERIOD = 10_000


def _check_name(name: str, text: str) -> str:
    if name not in OBJECTIVE_NAMES:
        raise ConfigError(f"unknown objective {name!r} in --objective {text!r}; "
                          f"choose from: {', '.join(OBJECTIVE_NAMES)}")
    return name


def _number(value: str, what: str, text: str) -> Fraction:
    try:
        number = Fraction(value.strip())
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{what} {value.strip()!r} in --objective {text!r} is not a number") from None
    return number


def _smooth_round_robin(weights: list[int]) -> list[int]:
    """One period of smooth weighted round-robin: indices into ``weights``, each i exactly weights[i] times."""
    current = [0] * len(weights)
    total = sum(weights)
    order = []
    for _ in range(total):
        current = [c + w for c, w in zip(current, weights)]
        best = max(range(len(weights)), key=lambda i: (current[i], -i))  # ties: the earlier one
        current[best] -= total
        order.append(best)
    return order


@dataclass(frozen=True)
class ObjectiveSchedule:
    """A parsed ``--objective``. ``kind`` is "single", "phases" or "mix".

    names: the objective of each phase (phases), of each mix member (mix), or the one name (single).
    lengths: phase lengths in ``unit`` (phases only). weights: mix weights (mix only).
    """

    kind: str
    names: tuple[str, ...]
    unit: str = "epochs"
    lengths: tuple[float, ...] = ()
    weights: tuple[Fraction, ...] = ()
    text: str = ""

    @classmethod
    def parse(cls, text: str, unit: str = "epochs") -> ObjectiveSchedule:
        """``"mlm"``, ``"clm:4,mlm:16,clm:4"`` or ``"mntp=15,clm=1"`` -> a schedule; ConfigError if malformed."""
        if unit not in UNITS:
            raise ConfigError(f"unknown schedule unit {unit!r}; choose one of: {', '.join(UNITS)}")
        parts = [p.strip() for p in text.split(",")]
        if not text.strip() or any(not p for p in parts):
            raise ConfigError(f"--objective {text!r} has an empty entry; write e.g. clm:4,mlm:16,clm:4")
        has_colon, has_equals = any(":" in p for p in parts), any("=" in p for p in parts)
        if has_colon and has_equals:
            raise ConfigError(f"--objective {text!r} mixes phases (name:length) and a mix (name=weight); "
                              "use one form")
        if not has_colon and not has_equals:
            if len(parts) > 1:
                raise ConfigError(f"--objective {text!r} lists objectives without lengths or weights; "
                                  "write clm:4,mlm:16 (phases) or mntp=15,clm=1 (mix)")
            return cls("single", (_check_name(parts[0], text),), unit, text=text)
        sep = ":" if has_colon else "="
        pairs = []
        for part in parts:
            name, found, value = part.partition(sep)
            if not found or sep in value or not value.strip():
                raise ConfigError(f"entry {part!r} in --objective {text!r} must be name{sep}number")
            pairs.append((_check_name(name.strip(), text), value))
        if has_colon:
            lengths = []
            for name, value in pairs:
                length = _number(value, f"length of {name}", text)
                if length <= 0:
                    raise ConfigError(f"phase {name}:{value.strip()} in --objective {text!r} must have a "
                                      f"length > 0 ({unit})")
                if unit != "epochs" and length.denominator != 1:
                    raise ConfigError(f"phase {name}:{value.strip()} in --objective {text!r} must be a whole "
                                      f"number of {unit}")
                lengths.append(float(length))
            return cls("phases", tuple(n for n, _ in pairs), unit, lengths=tuple(lengths), text=text)
        weights = []
        for name, value in pairs:
            weight = _number(value, f"weight of {name}", text)
            if weight < 0:
                raise ConfigError(f"mix weight {name}={value.strip()} in --objective {text!r} must be >= 0")
            weights.append(weight)
        names = [n for n, _ in pairs]
        if len(set(names)) != len(names):
            raise ConfigError(f"--objective {text!r} names an objective twice in a mix; give each one weight")
        if not any(w > 0 for w in weights):
            raise ConfigError(f"--objective {text!r}: a mix needs at least one weight > 0")
        schedule = cls("mix", tuple(names), unit, weights=tuple(weights), text=text)
        if len(schedule._mix_period()) > MAX_MIX_PERIOD:
            raise ConfigError(f"--objective {text!r}: the weights repeat only every "
                              f"{len(schedule._mix_period())} micro-batches; use small whole numbers")
        return schedule

    # ---- lengths and boundaries -----------------------------------------------------------------

    @property
    def total_length(self) -> float | None:
        """The summed phase lengths in ``unit``; None for a single objective or a mix (no length)."""
        return float(sum(self.lengths)) if self.kind == "phases" else None

    @property
    def boundaries(self) -> tuple[float, ...]:
        """Start of each phase in ``unit``, plus the end of the last: ``[n_phases + 1]``."""
        out = [0.0]
        for length in self.lengths:
            out.append(out[-1] + length)
        return tuple(out)

    def total_steps(self, steps_per_epoch: int, tokens_per_step: float | None = None) -> int | None:
        """The schedule's length in optimizer steps (None without phases).

        Epochs: ceil(total * steps_per_epoch). Tokens: ceil(total / tokens_per_step), an estimate
        (only the last packed row has padding); the phases themselves switch on tokens actually seen.
        """
        total = self.total_length
        if total is None:
            return None
        if self.unit == "epochs":
            return max(1, math.ceil(total * steps_per_epoch - 1e-9))
        if self.unit == "steps":
            return int(total)
        if not tokens_per_step:
            raise ConfigError("a schedule in tokens needs the tokens per step to give a length in steps")
        return max(1, math.ceil(total / tokens_per_step))

    def position(self, step: int, epoch_float: float, tokens_seen: int) -> float:
        """Where the run is, in ``unit``, at the start of ``step``."""
        return {"epochs": float(epoch_float), "steps": float(step), "tokens": float(tokens_seen)}[self.unit]

    # ---- lookups --------------------------------------------------------------------------------

    def phase_at(self, step: int, epoch_float: float = 0.0, tokens_seen: int = 0) -> int:
        """Index of the phase in force (0 for a single objective or a mix); past the end, the last phase.

        A change of this value between consecutive steps is a phase change for the trainer to log.
        """
        if self.kind != "phases":
            return 0
        pos = self.position(step, epoch_float, tokens_seen)
        ends = self.boundaries[1:]
        for i, end in enumerate(ends):
            if pos < end - 1e-9 * max(1.0, abs(end)):  # tolerance: epoch_float = step / steps_per_epoch
                return i
        return len(ends) - 1

    @cached_property
    def _period(self) -> list[str]:
        return self._mix_period()

    def _mix_period(self) -> list[str]:
        scale = reduce(math.lcm, (w.denominator for w in self.weights), 1)
        ints = [int(w * scale) for w in self.weights]
        g = reduce(math.gcd, ints)
        members = [i for i, w in enumerate(ints) if w > 0]
        order = _smooth_round_robin([ints[i] // g for i in members])
        return [self.names[members[i]] for i in order]

    def name_at(self, step: int, micro_index: int, epoch_float: float = 0.0, tokens_seen: int = 0) -> str:
        """The objective for one micro-batch. ``micro_index``: global micro-batch count since step 0
        (``step * grad_accum + a``), the same on every rank."""
        if self.kind == "single":
            return self.names[0]
        if self.kind == "phases":
            return self.names[self.phase_at(step, epoch_float, tokens_seen)]
        return self._period[micro_index % len(self._period)]

    def describe(self) -> str:
        """One line for the log, e.g. "clm 4 -> mlm 16 -> clm 4 epochs" or "mix mntp 15 : clm 1"."""
        if self.kind == "single":
            return self.names[0]
        if self.kind == "phases":
            return " -> ".join(f"{n} {length:g}" for n, length in zip(self.names, self.lengths)) + f" {self.unit}"
        return "mix " + " : ".join(f"{n} {w}" for n, w in zip(self.names, self.weights))


class ScheduledObjectives:
    """An ObjectiveSchedule with one built objective per distinct name.

    ``objective_at(step, micro_index, epoch_float, tokens_seen)`` -> the objective to call.
    """

    def __init__(self, schedule: ObjectiveSchedule, objectives: dict[str, Objective]) -> None:
        self.schedule = schedule
        self.objectives = objectives

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.schedule.names))

    def objective_at(self, step: int, micro_index: int, epoch_float: float = 0.0, tokens_seen: int = 0) -> Objective:
        return self.objectives[self.schedule.name_at(step, micro_index, epoch_float, tokens_seen)]

    def phase_at(self, step: int, epoch_float: float = 0.0, tokens_seen: int = 0) -> int:
        return self.schedule.phase_at(step, epoch_float, tokens_seen)


def build_schedule(text: str, tokenizer: Tokenizer, options: ObjectiveOptions | None = None, *,
                   unit: str = "epochs") -> ScheduledObjectives:
    """Parse ``--objective`` and build each objective it names once, from ``options`` (None: the defaults)."""
    schedule = ObjectiveSchedule.parse(text, unit)
    objectives = {name: build_objective(name, tokenizer, options) for name in dict.fromkeys(schedule.names)}
    return ScheduledObjectives(schedule, objectives)
