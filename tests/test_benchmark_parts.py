"""benchmarks/train_step_parts.py wraps Trainer internals by name: this keeps it in step with the trainer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_train_step_parts_times_every_part(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import train_step_parts

    assert train_step_parts.main(["--size", "tiny", "--vocab-size", "300", "--seq-len", "32", "--batch-size", "4",
                                  "--steps", "2", "--rounds", "1", "--warmup", "1", "--profile"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    rounds = [json.loads(line) for line in captured.err.splitlines() if line.startswith('{"round"')]
    assert len(rounds) == 1 and summary["summary"] is True
    median = summary["median_ms"]
    for part in train_step_parts.PARTS:  # a renamed trainer method would leave its part at 0
        assert median[part] > 0, part
    assert abs(sum(summary["share"].values()) - 1.0) < 0.01
    assert median["forward"] + median["backward"] < median["step_ms"]
    matmul = summary["matmul"]  # the profiler found the products (names unchanged) and counted their work
    assert 0 < matmul["matmul_ms"] < matmul["profiled_step_ms"] and matmul["matmul_gflop"] > 0
    assert abs(matmul["matmul_ms"] + matmul["rest_ms"] - matmul["profiled_step_ms"]) < 0.2
    sys.modules.pop("train_step_parts", None)
