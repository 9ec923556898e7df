"""benchmarks/train_step_parts.py wraps Trainer internals by name: this keeps it in step with the trainer.
benchmarks/dropout_speed.py times masklm's dropout against torch's: it runs and reports every approach.
benchmarks/cpu_kernels.py times the fused CPU kernels against the paths they replace, and leaves them on.
benchmarks/gpt_bert_step.py swaps GPT-BERT's DWA and attention for the spellings they replaced, and back.
benchmarks/generate_speed.py counts the drafts a round keeps under the exact rule and under typical acceptance."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

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
    assert rounds[0]["minor_faults"] >= 0 and rounds[0]["system_ms"] >= 0
    from masklm.models import cpu_kernels

    assert summary["cpu_kernels"] == (cpu_kernels.unavailable() or "available")
    sys.modules.pop("train_step_parts", None)


def test_dropout_speed_times_every_approach(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import dropout_speed

    assert dropout_speed.main(["--rounds", "2", "--calls", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line.get("round") for line in lines[:-1]] == [0, 1] and lines[-1]["summary"] is True
    for shape, ms in lines[-1]["median_ms"].items():
        assert set(ms) == {"torch", "masklm", "bits_torch", "bits_sfc64"} and min(ms.values()) > 0, shape
    assert lines[-1]["freed_memory_kept"] is (sys.platform.startswith("linux"))
    sys.modules.pop("dropout_speed", None)


def test_cpu_kernels_times_the_kernel_against_both_anchors(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import cpu_kernels

    from masklm.models import cpu_kernels as kernels

    if kernels.unavailable():
        pytest.skip(kernels.unavailable())
    real = kernels.usable
    assert cpu_kernels.main(["--quick"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line.get("round") for line in lines[1:-1]] == [0, 0, 1, 1]
    summary = lines[-1]["summary"]
    assert set(summary["attention"]["median_ms"]) == {"fused", "explicit", "sdpa"}
    assert summary["attention"]["sdpa/fused"] > 0 and summary["step"]["explicit/fused"] > 0
    assert kernels.usable is real
    sys.modules.pop("cpu_kernels", None)


@pytest.mark.slow
def test_train_e2e_runs_twice_in_one_work_folder(monkeypatch, capsys, tmp_path):
    """The masklm side of the end-to-end benchmark reads tokens/s from the run it starts; a second call with
    the same --work reuses the tokenizer and puts its runs in a new folder (before, the finished run of the
    first call made masklm refuse the second)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import train_e2e

    for _ in range(2):
        assert train_e2e.main(["--quick", "--skip-hf", "--work", str(tmp_path)]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["masklm_tokens_per_s"] > 0 and summary["rounds"] == 1
        assert summary["machine"]["masklm_cpu_kernels"]  # "used", or why not
        assert summary["machine"]["cpu_bf16_matmul"] in ("amx_bf16", "avx512_bf16", "none")
    assert len(list(tmp_path.glob("runs-*"))) == 2 and len(list(tmp_path.glob("prep-*"))) == 1
    sys.modules.pop("train_e2e", None)


def test_gpt_bert_step_times_every_config_and_restores_today(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpt_bert_step

    from masklm.models import dwa, ltg_bert

    seen = []
    monkeypatch.setattr(dwa._Mix, "apply", lambda *a, real=dwa._Mix.apply: seen.append("buffer") or real(*a))
    gpt_bert_step.main(["--sizes", "tiny", "--rounds", "1", "--steps", "1", "--warmup", "1", "--vocab-size", "512"])
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 2 and lines[0]["round"] == 0
    result = lines[-1]["results"][0]
    assert set(result["median_ms_per_step"]) == set(gpt_bert_step.CONFIGS)
    assert all(ms > 0 for ms in result["median_ms_per_step"].values()) and result["over_now"]["now"] == 1.0
    # the buffer path ran in the configs that use it (2 of 4), 4 blocks a step, 2 steps each, warm-up aside
    assert len(seen) == 4 * (1 + 2 * 2)
    assert (ltg_bert.depth_mix_usable, ltg_bert.attend_with_bias) == gpt_bert_step.NOW
    sys.modules.pop("gpt_bert_step", None)


def test_kept_drafts_counts_the_exact_rules_expectation_and_typical_acceptances_leading_passes(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import torch
    from generate_speed import kept_drafts

    # row 0: p/q at the drafts 0.5/0.75 then 1/0.5 -> kept 2/3 + 2/3; both pass typical acceptance
    # row 1: 0.05/0.5 then 1/0.5 -> 0.1 + 0.1; the first fails (0.05 <= min(0.09, 0.3 e^-H)), so none count
    p = torch.tensor([[[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], [[0.05, 0.95, 0.0], [1.0, 0.0, 0.0]]])
    q = torch.tensor([[[0.25, 0.75, 0.0], [0.5, 0.5, 0.0]], [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]]])
    drafts = torch.tensor([[1, 0], [0, 0]])
    got = kept_drafts(p.log(), q.log(), drafts)
    assert abs(got["exact"] - (4 / 3 + 0.2) / 2) < 1e-6
    assert got["typical"] == 1.0 and got["typical_pass"] == [0.5, 1.0]
    same = kept_drafts(q.log(), q.log(), drafts)  # drafts from the causal distribution itself: all kept
    assert abs(same["exact"] - 2.0) < 1e-6


def test_top_probability_gives_each_positions_mean_best_and_the_share_at_or_above_each_threshold(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import torch
    from generate_speed import top_probability

    # two rows, two positions (three tokens): best probabilities 0.6 / 0.3 (row 0) and 0.95 / 0.55 (row 1)
    probs = torch.tensor([[[0.6, 0.3, 0.1], [0.3, 0.29, 0.2]], [[0.05, 0.95, 0.0], [0.55, 0.45, 0.0]]])
    got = top_probability(probs.log(), at_least=(0.5, 0.9))
    assert [round(m, 6) for m in got["mean"]] == [0.775, 0.425]
    assert got["at_least"] == {"0.5": [1.0, 0.5], "0.9": [0.5, 0.0]}
