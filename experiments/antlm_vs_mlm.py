"""AntLM vs MLM vs GPT-BERT's MNTP mix vs masked diffusion, at equal token budgets, on the built-in corpus.

Four identical tiny models (same architecture, same size, same seed, so the same initial weights; the
same tokenizer, data, held-out split, batch size, sequence length, learning-rate schedule and number of
steps, hence the same number of training tokens) differ only in ``--objective``:

    mlm        pure masked LM (15%, 80/10/10)
    antlm      AntLM: clm -> mlm -> clm in the ratio 1:4:1 of the budget (--schedule-unit steps or epochs)
    mntp+clm   GPT-BERT's mix ``mntp=15,clm=1`` across micro-batches
    diffusion  MDLM masked diffusion

After training, every model is scored with the library's evaluators on the same held-out rows:
masked-token accuracy at a fixed 15% (``evaluate_mlm``), causal perplexity (``evaluate_causal``) and
the MDLM bound (``evaluate_diffusion``: exp of the per-token NELBO, an *upper bound* on perplexity,
estimated with ``--diffusion-samples`` Monte Carlo draws of t per row). MNTP models predict token i+1
at position i, so plain MLM accuracy reads them at the wrong position; the MNTP-aligned column (``mntp_accuracy``) scores
the same masked inputs and the same targets (minus those that start a document) read at position i-1.

    python experiments/antlm_vs_mlm.py                 # default: 1200 steps per run (11 min measured with --threads 1)
    python experiments/antlm_vs_mlm.py --threads 1     # on a busy machine: far less OpenMP waiting
    python experiments/antlm_vs_mlm.py --quick         # ~1 min smoke run
    python experiments/antlm_vs_mlm.py --steps 2000 --schedule-unit epochs --out runs/antlm2k

Writes ``OUT/results.json``, ``OUT/results.md`` (the table) and ``OUT/antlm_vs_mlm.png`` (the plot);
each run's folder (``OUT/<run>/``) holds its model, metrics.jsonl and loss.png.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from common import Experiment

from masklm.data.corpus import iter_documents
from masklm.data.packing import PackedRows, split_documents
from masklm.data.shards import ShardedCorpus, prepare_shards
from masklm.errors import MaskLMError
from masklm.modeldir import load_model_dir
from masklm.tokenizer import Tokenizer, train_tokenizer
from masklm.training.config import TrainConfig
from masklm.training.evaluate import (
    EVAL_SEED_OFFSET,
    evaluate_causal,
    evaluate_diffusion,
    evaluate_mlm,
    heldout_rows,
)
from masklm.training.trainer import train

RUNS = ("mlm", "antlm", "mntp+clm", "diffusion")
MIX = "mntp=15,clm=1"
ANTLM_RATIO = (("clm", 1), ("mlm", 4), ("clm", 1))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 1200; --quick 40)")
    p.add_argument("--out", default="runs/antlm_vs_mlm", help="output folder (must be new or empty)")
    p.add_argument("--arch", default="ltg-bert", help="architecture (default ltg-bert)")
    p.add_argument("--size", default="tiny", help="size preset (default tiny)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a ~1-minute smoke version (few steps, small eval)")
    p.add_argument("--schedule-unit", choices=("steps", "epochs"), default="steps",
                   help="unit of the AntLM phases (the 1:4:1 split of the budget is the same either way)")
    p.add_argument("--corpus", default="kjv", help="built-in corpus name or path (default kjv)")
    p.add_argument("--tokenizer", default=None, help="an existing tokenizer folder (default: train one)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--heldout-fraction", type=float, default=0.03)
    p.add_argument("--eval-batches", type=int, default=None,
                   help="held-out batches scored (default 16 = the whole kjv held-out split; --quick 2)")
    p.add_argument("--diffusion-samples", type=int, default=None,
                   help="Monte Carlo draws of t per row for the diffusion bound (default 32; --quick 2)")
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {', '.join(RUNS)}")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice); 1 is much faster on a busy machine")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 40 if args.quick else 1200
    if args.eval_batches is None:
        args.eval_batches = 2 if args.quick else 16
    if args.diffusion_samples is None:
        args.diffusion_samples = 2 if args.quick else 32
    if args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    args.runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = [r for r in args.runs if r not in RUNS]
    if unknown or not args.runs:
        p.error(f"--runs: unknown run(s) {unknown}; choose from {', '.join(RUNS)}")
    return args


def antlm_objective(steps: int, unit: str, steps_per_epoch: int) -> str:
    """The 1:4:1 clm/mlm/clm AntLM schedule scaled to ``steps``, in ``unit`` (steps or exact epoch fractions)."""
    edge = max(1, round(steps / 6))
    lengths = [edge, max(1, steps - 2 * edge), edge]
    if unit == "steps":
        return ",".join(f"{name}:{n}" for (name, _), n in zip(ANTLM_RATIO, lengths))
    # Epochs: the same step counts as exact fractions of an epoch, so the phases switch on the same steps.
    return ",".join(f"{name}:{Fraction(n, steps_per_epoch)}" for (name, _), n in zip(ANTLM_RATIO, lengths))


def evaluate_mntp_aligned(model, rows, tok, *, batch_size: int, max_batches: int, seed: int) -> dict[str, float]:
    """Masked-token accuracy read the GPT-BERT way: the prediction for masked token j is the output at j-1.

    Same masked inputs as ``evaluate_mlm`` (same seed, rate and rows); the targets are the same masked
    tokens, except those that start a document or a row (nothing before them in their document).
    """
    r = evaluate_mlm(model, rows, tok, batch_size=batch_size, max_batches=max_batches, seed=seed, shift=True)
    return {"mntp_loss": r["eval_loss"], "mntp_accuracy": r["eval_accuracy"], "mntp_tokens": r["eval_tokens"]}


def _last_record(metrics: Path, key: str) -> dict[str, Any] | None:
    found = None
    for line in metrics.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            if key in rec:
                found = rec
    return found


def evaluate_run(run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """All metrics for one trained run, on the held-out rows of its (shared) data split."""
    model, _, tok = load_model_dir(run_dir / "final")
    rows = heldout_rows(ShardedCorpus(run_dir / "data"), heldout_fraction=args.heldout_fraction, seed=args.seed,
                        seq_len=args.seq_len, pad_id=tok.pad_id)
    kw = dict(batch_size=args.batch_size, max_batches=args.eval_batches)
    mlm = evaluate_mlm(model, rows, tok, seed=args.seed, **kw)
    causal = evaluate_causal(model, rows, tok, **kw)
    diff = evaluate_diffusion(model, rows, tok, samples=args.diffusion_samples, seed=args.seed + EVAL_SEED_OFFSET,
                              **kw)
    mntp = evaluate_mntp_aligned(model, rows, tok, seed=args.seed, **kw)
    return {
        "heldout_docs": [int(d) for d in rows.doc_indices],
        "heldout_rows": min(len(rows), args.batch_size * args.eval_batches),
        "mlm_accuracy": mlm["eval_accuracy"], "mlm_loss": mlm["eval_loss"], "mlm_tokens": mlm["eval_tokens"],
        "mntp_accuracy": mntp["mntp_accuracy"], "mntp_loss": mntp["mntp_loss"],
        "causal_ppl": causal["causal_ppl"], "causal_loss": causal["causal_loss"], "causal_tokens": causal["tokens"],
        "diffusion_ppl_bound": diff["diffusion_ppl_bound"], "diffusion_nelbo": diff["diffusion_nelbo"],
        "diffusion_nelbo_stderr": diff["diffusion_nelbo_stderr"], "diffusion_samples": diff["samples"],
        "diffusion_tokens": diff["tokens"],
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| run | objective | steps | train tokens | MLM acc (15%) | MNTP-aligned acc | causal ppl "
            "| diffusion ppl bound (<=) | train s |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        lo = math.exp(r["diffusion_nelbo"] - 2 * r["diffusion_nelbo_stderr"])
        hi = math.exp(r["diffusion_nelbo"] + 2 * r["diffusion_nelbo_stderr"])
        lines.append(
            f"| {r['run']} | `{r['objective']}` | {r['steps']} | {r['train_tokens']:,} | {r['mlm_accuracy']:.1%} "
            f"| {r['mntp_accuracy']:.1%} | {r['causal_ppl']:.1f} | {r['diffusion_ppl_bound']:.1f} "
            f"({lo:.1f}-{hi:.1f}, K={r['diffusion_samples']}) | {r['train_seconds']:.0f} |")
    return head + "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], out_png: Path) -> Path:
    import matplotlib  # lazy: only the final plot needs it, and it takes a second to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["run"] for r in rows]
    x = list(range(len(rows)))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"][:len(rows)]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    ax = axes[0]
    ax.bar([i - 0.2 for i in x], [100 * r["mlm_accuracy"] for r in rows], 0.4, color=colors, label="plain (at j)")
    ax.bar([i + 0.2 for i in x], [100 * r["mntp_accuracy"] for r in rows], 0.4, color=colors, hatch="//",
           alpha=0.5, label="MNTP-aligned (at j-1)")
    ax.set_title("held-out masked-token accuracy\n(15% masked, higher is better)")
    ax.set_ylabel("%")
    ax.set_ylim(0, 1.35 * max(100 * max(r["mlm_accuracy"], r["mntp_accuracy"]) for r in rows))
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    ax = axes[1]
    ax.bar(x, [r["causal_ppl"] for r in rows], color=colors)
    ax.set_yscale("log")
    ax.set_title("held-out causal perplexity\n(lower is better)")
    ax = axes[2]
    bounds = [r["diffusion_ppl_bound"] for r in rows]
    err = [[b - math.exp(r["diffusion_nelbo"] - 2 * r["diffusion_nelbo_stderr"]) for b, r in zip(bounds, rows)],
           [math.exp(r["diffusion_nelbo"] + 2 * r["diffusion_nelbo_stderr"]) - b for b, r in zip(bounds, rows)]]
    ax.bar(x, bounds, color=colors, yerr=err, capsize=4)
    ax.set_yscale("log")
    ax.set_title(f"diffusion perplexity upper bound\n(K={rows[0]['diffusion_samples']} samples, +-2 s.e.)")
    for ax in axes:
        ax.set_xticks(x, names)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{rows[0]['arch']} {rows[0]['size']}, {rows[0]['steps']} steps x {rows[0]['batch_size']} x "
                 f"{rows[0]['seq_len']} tokens each, seed {rows[0]['seed']}")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Train and evaluate every run; write results.json, results.md and the plot; return the table rows."""
    args = parse_args(argv)
    run = Experiment("antlm_vs_mlm.py", args.out, argv, args.threads)
    out, log = run.out, run.log

    # One tokenizer and one shard folder for every run: same vocabulary, same rows, same held-out split.
    if args.tokenizer:
        tok_dir = Path(args.tokenizer)
        tok = Tokenizer.load(tok_dir)
    else:
        tok_dir = out / "tokenizer"
        log(f"training a wordpiece tokenizer (vocab {args.vocab_size}) on {args.corpus!r}")
        tok = train_tokenizer(iter_documents([args.corpus]), kind="wordpiece", vocab_size=args.vocab_size,
                              model_max_length=args.seq_len)
        tok.save(tok_dir)
    prepare_shards([args.corpus], tok, out / "data", log=log)
    shards = ShardedCorpus(out / "data")
    train_docs, _ = split_documents(shards.num_documents, args.heldout_fraction, args.seed)
    steps_per_epoch = -(-len(PackedRows(shards, train_docs, args.seq_len, tok.pad_id)) // args.batch_size)

    objectives = {"mlm": "mlm", "antlm": antlm_objective(args.steps, args.schedule_unit, steps_per_epoch),
                  "mntp+clm": MIX, "diffusion": "diffusion"}
    results: list[dict[str, Any]] = []
    for name in args.runs:
        run_dir = out / name.replace("+", "_")
        shutil.copytree(out / "data", run_dir / "data")  # prepare_shards finds it up to date
        cfg = TrainConfig(
            arch=args.arch, size=args.size, corpus=[args.corpus], out=str(run_dir), tokenizer=str(tok_dir),
            objective=objectives[name], schedule_unit=args.schedule_unit, max_steps=args.steps,
            seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr, warmup_steps=0.05,
            heldout_fraction=args.heldout_fraction, eval_batches=args.eval_batches,
            eval_diffusion_samples=args.diffusion_samples, seed=args.seed, log_every=10,
            progress=not args.no_progress,
            # a few epochs at most: no dropout, as in masklm demo
            model={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        )
        log(f"run {name}: --objective {objectives[name]} ({args.steps} steps)")
        t_run = time.perf_counter()
        train(cfg, log=lambda m, name=name: log(f"  {name}: {m}"))
        train_seconds = time.perf_counter() - t_run
        t_eval = time.perf_counter()
        metrics = evaluate_run(run_dir, args)
        last = _last_record(run_dir / "metrics.jsonl", "tokens")
        trainer_eval = _last_record(run_dir / "metrics.jsonl", "eval_accuracy")
        if trainer_eval and abs(trainer_eval["eval_accuracy"] - metrics["mlm_accuracy"]) > 1e-9:
            log(f"  {name}: warning: reloaded model's MLM accuracy {metrics['mlm_accuracy']:.6f} differs from "
                f"the trainer's final eval {trainer_eval['eval_accuracy']:.6f}")
        if results and metrics["heldout_docs"] != results[0]["heldout_docs"]:
            raise RuntimeError("runs disagree on the held-out split; they must share tokenizer, data and seed")
        row = {"run": name, "objective": objectives[name], "arch": args.arch, "size": args.size,
               "steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len, "seed": args.seed,
               "schedule_unit": args.schedule_unit, "train_tokens": int(last["tokens"]) if last else None,
               "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - t_eval, **metrics}
        results.append(row)
        log(f"run {name}: MLM acc {row['mlm_accuracy']:.1%}, MNTP-aligned acc {row['mntp_accuracy']:.1%}, "
            f"causal ppl {row['causal_ppl']:.1f}, diffusion ppl <= {row['diffusion_ppl_bound']:.1f} "
            f"(K={row['diffusion_samples']}); train {train_seconds:.0f}s")
        shutil.rmtree(run_dir / "data")  # the shared copy in OUT/data stays

    for r in results:
        r.pop("heldout_docs")
    meta = run.finish(results, markdown_table(results), heldout_rows=results[0]["heldout_rows"] if results else None,
                      steps_per_epoch=steps_per_epoch)
    png = plot(results, out / "antlm_vs_mlm.png")
    print(f"held-out rows: {meta['heldout_rows']} x {args.seq_len} tokens; plot {png}")
    return results


if __name__ == "__main__":
    try:
        main()
    except MaskLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
