"""Which objective should ``masklm demo`` train: held-out masked accuracy of the MLM-only demo (before issue
#13) against GPT-BERT hybrids with more or fewer causal batches, at the same number of steps.

Issue #13 asks the demo to train a hybrid (``mntp`` + ``clm``) that generates, while its held-out masked
accuracy stays at least what the MLM-only demo reached. Every run here is the demo's own configuration
(``cli.demo.demo_config``: tiny model, vocabulary 4096, 32 x 64 tokens, lr 2e-3, no dropout, same seed and
corpus) with only the objective (and, for the MLM baseline, the architecture it used: LTG-BERT) changed,
trained for the same ``--steps``, so a causal batch costs a masked one. Accuracy is read where each model
predicts (one to the left after ``mntp``) on the demo's held-out rows, pooled over ``--mask-seeds``
different 15% maskings of them (the demo prints one masking, about 2,500 tokens: +-0.9 points of
standard error). The hybrids also report the mean accepted drafts of speculative generation and its
tokens/s against left-to-right sampling (8 prompts x 64 tokens, temperature 1), since the mix trades
masked accuracy against causal skill.

    python experiments/demo_objective.py --quick              # a smoke run, about a minute
    python experiments/demo_objective.py --steps 1400         # what the demo reaches in 3 min on 2 cores

Writes ``OUT/results.json`` and ``OUT/results.md``; prints a JSON line per run and the table.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from common import Experiment

from masklm.cli.demo import PROMPT, demo_config, heldout_accuracy
from masklm.inference.pipeline import load
from masklm.training.trainer import train

RUNS = [  # (name, arch, objective)
    ("mlm (the demo before #13)", "ltg-bert", "mlm"),
    ("mntp=3,clm=1 (the demo now)", "gpt-bert", "mntp=3,clm=1"),
    ("mntp=7,clm=1", "gpt-bert", "mntp=7,clm=1"),
    ("mntp=15,clm=1 (GPT-BERT's ratio)", "gpt-bert", "mntp=15,clm=1"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo_objective", help="folder for the runs (must not exist)")
    p.add_argument("--steps", type=int, default=1400, help="training steps of every run")
    p.add_argument("--mask-seeds", type=int, default=5, help="maskings of the held-out rows pooled")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="40 steps, 2 maskings: checks that it runs")
    return p.parse_args(argv)


def generation_speed(pipe, length: int = 64, rounds: int = 3) -> dict:
    """Speculative (the hybrid default) against left-to-right sampling, 8 prompts, alternating rounds."""
    prompts = [PROMPT, "And the LORD said", "In the beginning", "Blessed are the", "And it came to pass",
               "The king of Israel", "Then Jesus said", "For God so loved"]
    seconds = {"speculative": [], "autoregressive": []}
    accepted = []
    for r in range(rounds):
        for strategy in (("speculative", "autoregressive") if r % 2 == 0 else ("autoregressive", "speculative")):
            t0 = time.perf_counter()
            out = pipe.generate(prompts, length=length, seed=r, strategy=strategy, temperature=1.0)
            seconds[strategy].append(time.perf_counter() - t0)
            if strategy == "speculative":
                accepted.append(out[0]["stats"]["mean_accepted"])
    med = {k: sorted(v)[len(v) // 2] for k, v in seconds.items()}
    return {"mean_accepted": sum(accepted) / len(accepted), "speed_vs_left_to_right": med["autoregressive"] / med["speculative"]}


def markdown_table(rows: list[dict]) -> str:
    head = ("| run | steps | held-out masked accuracy | masked tokens | mean accepted drafts | speculative vs "
            "left-to-right |\n|---|---|---|---|---|---|\n")
    return head + "\n".join(
        f"| {r['run']} | {r['steps']} | {r['eval_accuracy']:.1%} | {r['eval_tokens']:,} | "
        + (f"{r['mean_accepted']:.2f} | {r['speed_vs_left_to_right']:.2f}x |" if "mean_accepted" in r else " | |")
        for r in rows) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    steps, seeds = (40, 2) if args.quick else (args.steps, args.mask_seeds)
    run = Experiment("demo_objective.py", args.out, argv)
    rows = []
    for name, arch, objective in RUNS:
        run_dir = run.out / objective.replace(",", "_").replace("=", "")
        cfg = demo_config(run_dir, "kjv", minutes=600.0, max_steps=steps, seed=args.seed, progress=False,
                          objective=objective, arch=arch)
        run.log(f"{name}: {arch} --objective {objective}, {steps} steps")
        t0 = time.perf_counter()
        train(cfg, log=lambda _m: None)
        minutes = (time.perf_counter() - t0) / 60
        pipe = load(run_dir / "final")
        row = {"run": name, "arch": arch, "objective": objective, "steps": steps, "train_minutes": round(minutes, 2),
               **heldout_accuracy(pipe, cfg, tuple(range(seeds))), "load_average": os.getloadavg()}
        if "clm" in objective:
            row.update(generation_speed(pipe, length=16 if args.quick else 64, rounds=1 if args.quick else 3))
        print(json.dumps(row), flush=True)
        rows.append(row)
    run.finish(rows, markdown_table(rows))
    return rows


if __name__ == "__main__":
    main()
