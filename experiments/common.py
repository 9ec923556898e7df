"""What every experiment script shares: the run folder it may write, its log, and its results files.

An experiment never writes into a folder that already holds files (the project rule: nothing a user made
is replaced without being asked). Each writes ``OUT/results.json`` (``{"meta": ..., "runs": [...]}``, meta
with the command, the wall time, the software and the machine) and ``OUT/results.md`` (the table).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from masklm.errors import ConfigError


class Experiment:
    """One run of an experiment script: ``out`` (made here; refused when it holds files), ``log(message)``
    (stderr, behind the seconds since the start) and ``finish(runs, table, **meta)``."""

    def __init__(self, script: str, out: str | Path, argv: list[str] | None, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.t0 = time.perf_counter()
        self.command = f"python experiments/{script} " + " ".join(argv if argv is not None else sys.argv[1:])
        self.out = Path(out)
        if self.out.exists() and any(self.out.iterdir()):
            raise ConfigError(f"{self.out} already exists and is not empty; pass another --out or remove it")
        self.out.mkdir(parents=True, exist_ok=True)

    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.0f}s] {message}", file=sys.stderr, flush=True)

    def finish(self, runs: list[dict[str, Any]], table: str, **meta: Any) -> dict[str, Any]:
        """Write ``results.json`` and ``results.md`` and print the table -> the meta written."""
        wall = time.perf_counter() - self.t0
        meta = {"command": self.command, "wall_seconds": wall, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "machine": platform.machine(),
                "python": platform.python_version(), **meta}
        (self.out / "results.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=2) + "\n",
                                               encoding="utf-8")
        (self.out / "results.md").write_text(table, encoding="utf-8")
        print(table)
        print(f"wall time {wall:.0f}s ({wall / 60:.1f} min); table {self.out / 'results.md'}")
        return meta
