"""A run's ``metrics.jsonl``: one JSON object per line, written by the main process only.

Lines, all with ``step`` (optimizer steps done) and ``objective``:

- training: ``loss`` (mean over the ``steps`` logged steps of that objective), ``lr``, ``tokens_per_s``,
  ``epoch`` (the masking epoch key), ``tokens`` (seen so far) and ``mask_rate`` (the scheduled rate at the
  logged step, only on lines whose objective masks by it: mlm, mntp), every ``log_every`` steps, one
  line per objective (or per ``+``-joined set of objectives sharing a step), so each names its source;
- ``{"objective": <name>, "phase": n}`` where phase n of an AntLM schedule begins;
- ``{"objective": "eval", ...}``: a held-out evaluation (``training.evaluate.evaluate_heldout``).

``PlainProgress`` is the progress of a run whose stderr is not a terminal (a job's log file, a pipe):
tqdm's bar redraws itself there every 0.1 s with a carriage return, which a file keeps as one line that
grows for the whole run; plain lines at log steps, at most one per ``every`` seconds, read like the
lines Hugging Face's Trainer logs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class StepStats:
    """What one optimizer step reports: its loss (summed over ranks), the objectives of its micro-batches
    (``+``-joined), the non-pad tokens it read on all ranks, its LR, its scheduled mask rate and whether
    any micro-batch masked by it, and the epoch key its rows came from."""

    loss: float
    objective: str
    tokens: int
    lr: float
    mask_rate: float
    masked: bool
    epoch: int


class MetricsLog:
    """Appends records to ``path`` (a no-op off the main process)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def truncate(self, after_step: int) -> None:
        """Keep only the records up to ``after_step``: a resumed run rewrites what came after its checkpoint."""
        if not self.enabled:
            return
        kept = []
        if after_step > 0 and self.path.is_file():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line)["step"] <= after_step]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


class LossWindow:
    """The steps since the last training lines: losses per objective, tokens, and the time they took."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.losses: dict[str, list[float]] = {}
        self.masked: set[str] = set()
        self.tokens = 0

    def add(self, stats: StepStats) -> None:
        self.losses.setdefault(stats.objective, []).append(stats.loss)
        if stats.masked:
            self.masked.add(stats.objective)
        self.tokens += stats.tokens

    def flush(self, step: int, tokens_seen: int, last: StepStats) -> list[dict[str, Any]]:
        """The training lines at ``step`` (``last``: that step's stats), one per objective; then starts afresh."""
        now = time.perf_counter()
        tokens_per_s = self.tokens / max(now - self.started, 1e-9)
        records = []
        for name, losses in self.losses.items():
            record = {"step": step, "objective": name, "loss": sum(losses) / len(losses), "lr": last.lr,
                      "tokens_per_s": tokens_per_s, "epoch": last.epoch, "tokens": tokens_seen}
            if name in self.masked:
                record["mask_rate"] = last.mask_rate
            records.append(record | {"steps": len(losses)})
        self.started, self.tokens, self.losses, self.masked = now, 0, {}, set()
        return records


class PlainProgress:
    """``line(step, total, records)`` -> one line for a log step's records (``LossWindow.flush``) when
    ``every`` seconds have passed since the last one, or at the last step; else None."""

    def __init__(self, every: float = 30.0) -> None:
        self.every = every
        self.begun = self.last = time.perf_counter()

    def line(self, step: int, total: int, records: list[dict[str, Any]]) -> str | None:
        now = time.perf_counter()
        if step < total and now - self.last < self.every:
            return None
        self.last = now
        losses = ", ".join(f"{r['objective']} {r['loss']:.3f}" for r in records)
        return (f"train: step {step:,}/{total:,} ({100 * step / max(total, 1):.0f}%), {now - self.begun:.0f} s: "
                f"loss {losses}; {records[0]['tokens_per_s']:,.0f} tokens/s")
