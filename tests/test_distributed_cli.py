"""Distributed training through the CLI, as a user types it (#12 point 6).

``torchrun --standalone --nproc-per-node 2 -m masklm train --batch-size B`` (gloo on CPU) must give the
weights of one process with ``--batch-size 2B``: each rank takes its slice of every global batch and the
loss is normalised by the global masked-token count (``training.trainer``). Dropout is off (TOML
``[model]``), because each rank draws its own dropout masks, which one process cannot reproduce. The
two-process run is then killed with SIGKILL part-way and resumed with ``--resume`` alone, and must still
match. Gradient accumulation and an objective mix (``mntp=15,clm=1``, one objective per micro-batch) are
checked under two processes too.

Tolerance: both sides run the same steps on the same data; only the order of float sums differs (the
all-reduce adds two half-batch gradients), so after a handful of steps the weights agree to about
1e-7; 1e-6 is the bound the issue states.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

import masklm
from masklm.cli import main

# Each torchrun start imports torch in three processes; the kill finds the workers through Linux's /proc.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc")]

TORCHRUN = Path(sys.executable).parent / "torchrun"
WORDS = "the a cat dog bird sat ran flew on under over mat tree house and then quickly slowly".split()
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """A small corpus and a TOML config: a tiny BERT with dropout off."""
    import random

    folder = tmp_path_factory.mktemp("inputs")
    rng = random.Random(0)
    corpus = folder / "toy.txt"
    corpus.write_text("".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 40))) + " .\n\n"
                              for _ in range(60)), encoding="utf-8")
    toml = folder / "tiny.toml"
    toml.write_text("eval_batches = 1\nheldout_fraction = 0.1\n[model]\nhidden_size = 32\nnum_hidden_layers = 1\n"
                    "num_attention_heads = 2\nintermediate_size = 64\n"
                    "hidden_dropout_prob = 0.0\nattention_probs_dropout_prob = 0.0\n")
    return corpus, toml


def flags(inputs: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    corpus, toml = inputs
    return ["train", "--config", str(toml), "--corpus", str(corpus), "--vocab-size", "150", "--seq-len", "32",
            "--lr", "1e-3", "--warmup", "2", "--log-every", "1", "--no-progress", "--out", str(out), *extra]


def torchrun(argv: list[str]) -> subprocess.Popen:
    """``torchrun --standalone --nproc-per-node 2 -m masklm ARGV``."""
    assert TORCHRUN.is_file(), f"torchrun is not installed beside {sys.executable}"
    src = str(Path(masklm.__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "masklm", *argv],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once: torchrun starts each worker in a session of its
    own, so killing the agent's process group would leave the workers training."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:  # /proc/PID/stat: "pid (name) state ppid ..."; the name may hold spaces and parentheses
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    for member in tree:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def finished(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    return out


def max_difference(a: Path, b: Path) -> float:
    wa, wb = (load_file(str(run / "final" / "model.safetensors")) for run in (a, b))
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def logged(run: Path) -> list[tuple[int, str]]:
    return [(r["step"], r["objective"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "loss" in r]


def test_two_processes_match_one_and_survive_a_kill(tmp_path, inputs, capsys):
    """batch 4 on each of 2 processes == batch 8 on one; SIGKILL part-way, `--resume`, and still equal."""
    steps = 16
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(flags(inputs, one, "--batch-size", "8", "--max-steps", str(steps))) == 0

    proc = torchrun(flags(inputs, two, "--batch-size", "4", "--max-steps", str(steps), "--save-every", "1",
                          "--keep-last", str(steps)))
    deadline = time.monotonic() + 300
    while not (two / "checkpoints" / "step-3").is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    kill_tree(proc.pid)
    proc.communicate()
    assert (two / "checkpoints" / "step-3").is_dir() and not (two / "final").exists(), "killed too late to test"

    before = sorted(p.name for p in (two / "checkpoints").iterdir())
    capsys.readouterr()
    assert main(["train", "--out", str(two), "--resume"]) == 2  # one process would read other rows, in another order
    assert "was trained by 2 processes and this resume has 1" in capsys.readouterr().err
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == before and not (two / "final").exists()
    out = finished(torchrun(["train", "--out", str(two), "--resume"]))
    assert "resumed from" in out
    assert [s for s, _ in logged(two)] == list(range(1, steps + 1))  # no step lost or repeated
    assert max_difference(one, two) < TOLERANCE, max_difference(one, two)
    record = json.loads((two / "training_args.json").read_text())
    assert record["batch_size"] == 4 and record["max_steps"] == steps  # restored, not the defaults


def test_grad_accumulation_and_an_objective_mix_under_two_processes(tmp_path, inputs):
    """2 processes x batch 2 x 2 micro-batches == 1 process x batch 4 x 2 micro-batches, with a mix that picks
    an objective per micro-batch (so both sides need the same micro-batches)."""
    mix = ("--objective", "mntp=15,clm=1", "--grad-accum", "2", "--max-steps", "12")
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(flags(inputs, one, "--batch-size", "4", *mix)) == 0
    finished(torchrun(flags(inputs, two, "--batch-size", "2", *mix)))
    assert logged(one) == logged(two)
    objectives = {o for _, o in logged(two)}  # a step whose two micro-batches differ logs "clm+mntp"
    assert "mntp" in objectives and any("clm" in o for o in objectives)  # the mix did use both
    assert max_difference(one, two) < TOLERANCE, max_difference(one, two)
