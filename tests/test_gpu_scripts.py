"""The scripts a session runs on a lent GPU machine (benchmarks/gpu_check*.sh), run here in their CPU modes.

A GPU machine is lent for 15 minutes at most, with no second try to spare: a script that broke since it was
written (a renamed flag, a moved function) would spend that time on a traceback. Each script's CPU mode runs
every step it runs on a GPU, with tiny shapes, so these tests fail where the GPU run would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(command: list[str], tmp_path: Path, timeout: int, **env: str) -> str:
    """Run ``command`` from the repository root with ``env`` added; -> stdout (the test fails on exit != 0)."""
    full_env = {**os.environ, "PYTHON": sys.executable, "MASKLM_CACHE": str(tmp_path / "cache"), **env}
    done = subprocess.run(command, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_gpu_check_attn_checks_every_form_on_cpu(tmp_path):
    out = tmp_path / "attn.json"
    _run([sys.executable, "benchmarks/gpu_check_attn.py", "--device", "cpu", "--out", str(out)], tmp_path, 300)
    result = json.loads(out.read_text())
    assert result["all_ok"] is True
    forms = [f for f in result["forms"] if "form" in f]
    assert {f["causal"] for f in forms} == {False, True} and all(f["ok"] for f in forms)
    assert {(s["arch"], s["metric"]) for s in result["sparse_scoring"]} == {
        (arch, metric) for arch in ("bert", "gpt-bert") for metric in ("pll", "mntp")}
    assert all(s["ok"] and s["max_abs_nats"] <= 1e-4 for s in result["sparse_scoring"])


@pytest.mark.slow
def test_gpu_check_generate_smoke_measures_every_strategy(tmp_path):
    out = tmp_path / "gen"
    stdout = _run(["bash", "benchmarks/gpu_check_generate.sh"], tmp_path, 600, SMOKE="1", OUT=str(out))
    assert "generate_speed rc=0" in stdout
    rows = json.loads((out / "generate_speed.json").read_text())["rows"]
    configs = {row["config"] for row in rows}
    assert {"autoregressive T=1.0 (KV cache)", "default (no --strategy)"} <= configs
    assert all(row["tokens_per_s"] > 0 for row in rows if "tokens_per_s" in row)
    assert "round cost in one-token left-to-right steps" in stdout  # what DraftSizer.COSTS["cuda"] needs
    assert "masked draft i equals the causal greedy token i" in stdout
    result = json.loads((out / "generate_speed.json").read_text())
    agreement, sampled = result["draft_agreement"], result["sampled_drafts_kept"]
    assert len(agreement) == 4 and all(0.0 <= a <= 1.0 for a in agreement)
    assert "a round keeps" in stdout and 0.0 <= sampled["exact"] <= 4.0 and 0.0 <= sampled["typical"] <= 4.0
    assert len(sampled["typical_pass"]) == 4
    confidence = result["block_confidence"]  # how sure each reading is over a block of 8 masks
    assert len(confidence["masked"]["mean"]) == 8 and len(confidence["causal"]["at_least"]["0.9"]) == 8
    assert all(0.0 < m <= 1.0 for m in confidence["masked"]["mean"] + confidence["causal"]["mean"])
    assert "top probability in a block of 8 masks" in stdout
    # quality pools every round's samples, each round with its own seed
    base = next(row for row in result["rows"] if row["config"] == "autoregressive T=1.0 (KV cache)")
    assert len(base["ppl_rounds"]) == result["rounds"]
    bar = result["issue_13_bar"]  # the default's verdict on issue #13's bar, CPU's 2x in the smoke run
    assert [b["length"] for b in bar] == [16] and bar[0]["speed_needed"] == 2.0
    default = next(row for row in result["rows"] if row["config"] == "default (no --strategy)")
    assert bar[0]["speed"] is (default["speedup_vs_ar"] >= 2.0) and "issue #13 bar, 16 tokens" in stdout


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_step(tmp_path):
    out = tmp_path / "gpu"
    stdout = _run(["bash", "benchmarks/gpu_check.sh"], tmp_path, 900, SMOKE="1", OUT=str(out))
    steps = ["train_e2e_base_128", "train_e2e_base_512", "precision_cuda", "inference_cuda", "compile_cuda",
             "step_parts_cuda"]
    for name in steps:
        assert f"== {name}: exit 0" in stdout, stdout
    assert "skipped" not in stdout
    # the HF anchor needs the .[bench] extra; the script checks for it the same way
    hf = subprocess.run([sys.executable, "-c", "import transformers, accelerate"], capture_output=True).returncode == 0
    assert ("transformers or accelerate is missing" in stdout) is not hf
    for name in ("train_e2e_base_128", "train_e2e_base_512"):
        summary = json.loads((out / f"{name}.json").read_text())
        assert summary["masklm_tokens_per_s"] > 0
        assert (summary["hf_tokens_per_s"] > 0) if hf else ("hf_tokens_per_s" not in summary), summary
    assert json.loads((out / "precision_cuda.json").read_text())["within_2pct"] is True
    assert json.loads((out / "inference_cuda.json").read_text())["same_top1"] is True
    assert json.loads((out / "compile_cuda.json").read_text())["speedup"] > 0
    assert json.loads((out / "step_parts_cuda.json").read_text())["summary"] is True
