"""Smoke test of experiments/antlm_vs_mlm.py: four tiny runs on a small synthetic corpus, a full table."""

from __future__ import annotations

import importlib.util
import json
import math
import random
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "antlm_vs_mlm.py"
WORDS = "the a cat dog bird sat ran flew on under over mat tree house and then quickly slowly".split()


def load_script():
    """The script as ``python experiments/antlm_vs_mlm.py`` runs it: its folder first on the path (for
    ``experiments/common.py``)."""
    if str(SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("antlm_vs_mlm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_antlm_vs_mlm_smoke(tmp_path):
    # One thread: these models are so small that a second OpenMP thread only adds waiting, a lot of it
    # when the cores are shared with other jobs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _smoke(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _smoke(tmp_path):
    rng = random.Random(0)
    corpus = tmp_path / "toy.txt"
    corpus.write_text("".join(
        " ".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + " ." for _ in range(3)) + "\n\n"
        for _ in range(60)), encoding="utf-8")
    out = tmp_path / "exp"
    script = load_script()
    rows = script.main(["--corpus", str(corpus), "--out", str(out), "--steps", "6", "--vocab-size", "120",
                        "--seq-len", "32", "--batch-size", "4", "--eval-batches", "2", "--diffusion-samples", "2",
                        "--heldout-fraction", "0.1", "--no-progress"])

    assert [r["run"] for r in rows] == ["mlm", "antlm", "mntp+clm", "diffusion"]
    assert rows[1]["objective"] == "clm:1,mlm:4,clm:1"  # 1:4:1 of a 6-step budget
    for r in rows:
        for key in ("mlm_accuracy", "mntp_accuracy", "causal_ppl", "diffusion_ppl_bound", "diffusion_nelbo"):
            assert math.isfinite(r[key]), (r["run"], key, r[key])
        assert 0.0 <= r["mlm_accuracy"] <= 1.0 and r["causal_ppl"] >= 1.0 and r["diffusion_samples"] == 2
    assert len({r["train_tokens"] for r in rows}) == 1  # equal token budgets
    table = (out / "results.md").read_text(encoding="utf-8").splitlines()
    assert len(table) == 2 + 4
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [r["run"] for r in saved["runs"]] == [r["run"] for r in rows]
    assert (out / "antlm_vs_mlm.png").stat().st_size > 0


def test_antlm_schedule_in_epochs_matches_steps():
    script = load_script()
    assert script.antlm_objective(1200, "steps", 474) == "clm:200,mlm:800,clm:200"
    assert script.antlm_objective(1200, "epochs", 474) == "clm:100/237,mlm:400/237,clm:100/237"
