"""``masklm demo``: the whole job on a laptop, on the built-in corpus, in a few minutes.

The demo trains a GPT-BERT-style hybrid (Charpentier & Samuel 2024: masked next-token prediction mixed with
causal LM on the same weights), so the model it leaves does everything masklm offers: it fills masks (read
one position to the left, as MNTP trained it), scores sentences, and generates, both left to right and in
parallel. An MLM-only model could not generate usable text (issue #13).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path

import numpy as np

from masklm.errors import ConfigError

# Causal batches in the mix: enough for left-to-right text, few enough that masked accuracy stays where the
# MLM-only demo left it (the GPT-BERT paper's 1:15 ratio gives little causal skill in a few hundred steps).
OBJECTIVE = "mntp=3,clm=1"
MINIMAL_PAIR = ("The LORD is my shepherd.", "The LORD are my shepherd.")
PROMPT = "And God said,"
# Held-out rows are few (2% of the documents, about 2,500 masked tokens per masking: +-0.9 points of standard
# error); the accuracy printed pools this many different 15% maskings of them.
MASKINGS = 5
MAX_STEPS = 100_000  # the default: the time budget ends the run first

EXAMPLES = [
    "In the beginning God created the [MASK] and the earth.",
    "And the LORD spake unto [MASK], saying,",
    "The [MASK] is my shepherd; I shall not want.",
    "And they went up into the [MASK] of the city.",
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a tiny model on the built-in corpus and try it",
                       description="Train a tokenizer and a tiny GPT-BERT hybrid (masked next-token + causal) on the King "
                                   "James Bible (built in), then show fill-mask, a scored minimal pair, a "
                                   "generated continuation, and held-out accuracy against the unigram baseline.")
    p.add_argument("--out", default="masklm-demo", help="run folder (default ./masklm-demo)")
    p.add_argument("--minutes", type=float, default=3.0, help="training time budget (default 3)")
    p.add_argument("--corpus", default="kjv", help="built-in corpus or path (default kjv)")
    p.add_argument("--max-steps", type=int, default=MAX_STEPS,
                   help="stop after this many steps even if time is left (for reproducible short runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="fp32",
                   help="fp32 (default), bf16 or fp16, as in masklm train; bf16 trains faster on a CPU with AMX")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds (as masklm train does)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: torch, the models and the trainer load only when the demo runs, not for `masklm --help`
    from masklm.inference.pipeline import load
    from masklm.training.trainer import train

    if not 0 < args.minutes < math.inf:
        raise ConfigError(f"--minutes must be a number > 0, got {args.minutes}")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise ConfigError(f"{out} already exists and is not empty; pass another --out, or --overwrite to replace it")
    cfg = demo_config(out, args.corpus, args.minutes, args.max_steps, args.seed, progress=not args.no_progress,
                      precision=args.precision)  # TrainConfig checks the fields, before anything is written
    cfg.overwrite = args.overwrite
    budget = f"{args.minutes:g} min" + (f" or {args.max_steps:,} steps, whichever comes first"
                                        if args.max_steps != MAX_STEPS else "")
    print(f"masklm demo: training a tiny GPT-BERT hybrid ({OBJECTIVE}) on {args.corpus!r} for about {budget} "
          f"(run folder {out})", file=sys.stderr)
    made = not out.exists()
    try:
        train(cfg)
    except KeyboardInterrupt:  # a demo stopped early keeps nothing worth resuming: leave no folder it made
        if made and out.is_dir():
            shutil.rmtree(out, ignore_errors=True)
            print(f"masklm demo: removed {out}, which it had made", file=sys.stderr)
        raise

    pipe = load(out / "final")
    show_fill_mask(pipe)
    show_minimal_pair(pipe)
    show_generation(pipe, args.seed)
    show_accuracy(pipe, cfg)
    print(f"\nmodel folder: {out / 'final'}   loss plot: {out / 'loss.png'}")
    print("next, try:")
    print(f"  masklm fill-mask --model {out / 'final'} \"The [MASK] of the LORD.\"")
    print(f"  masklm generate --model {out / 'final'} \"And the king said\" --length 32")
    print(f"  masklm train --corpus my_texts/ --tokenizer {out / 'final'} --size small --out runs/mine")
    print(f"  python -c \"import masklm; print(masklm.load('{out / 'final'}').fill_mask('Let there be [MASK].'))\"")
    print(f"  (in transformers: AutoModelForMaskedLM.from_pretrained('{out / 'final'}', trust_remote_code=True))")
    return 0


def demo_config(out: Path, corpus: str, minutes: float, max_steps: int, seed: int, progress: bool = True,
                objective: str = OBJECTIVE, arch: str = "gpt-bert", precision: str = "fp32"):
    """The demo's training run (``experiments/demo_objective.py`` varies ``objective`` and ``arch``)."""
    from masklm.training.config import TrainConfig  # lazy: with the trainer

    # LTG-BERT's layer (pre-norm with NormFormer norms, relative positions), which GPT-BERT keeps, leaves the
    # unigram plateau within a few hundred steps on this corpus; a post-LN BERT of the same size needs
    # thousands (measured: 29% vs 11% held-out accuracy after 300 steps), which a laptop demo cannot afford.
    return TrainConfig(
        arch=arch, size="tiny", corpus=[corpus], out=str(out), vocab_size=4096, seq_len=64,
        batch_size=32, lr=2e-3, warmup_steps=0.05, max_steps=max_steps, time_limit=minutes,
        objective=objective, heldout_fraction=0.02, eval_batches=16, log_every=10, seed=seed,
        progress=progress, precision=precision,
        model={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    )


def show_fill_mask(pipe) -> None:
    print("\nfill-mask:")
    for text in EXAMPLES:
        preds = pipe.fill_mask(text, top_k=3)
        words = ", ".join(f"{p['token_str']} ({p['score']:.2f})" for p in preds)
        print(f"  {text}\n    -> {words}")


def show_minimal_pair(pipe) -> None:
    """Score a grammatical sentence and its ungrammatical twin with the metric that fits the model."""
    good, bad = pipe.score(list(MINIMAL_PAIR))
    verdict = "prefers the grammatical one" if good > bad else "prefers the ungrammatical one"
    print(f"\nminimal pair ({pipe.default_metric}, log-probability in nats):")
    print(f"  {good:8.2f}  {MINIMAL_PAIR[0]}\n  {bad:8.2f}  {MINIMAL_PAIR[1]}\n  -> the model {verdict}")


def show_generation(pipe, seed: int, length: int = 32, repeats: int = 3) -> None:
    """One continuation with the default strategy, its speed beside left-to-right sampling; for speculative
    decoding, how many rounds drafted (the rest were plain causal steps: drafts that did not pay). A call of
    32 tokens takes tens of milliseconds, so each is timed ``repeats`` times, alternating, after one warm-up
    call each (the first call pays one-time costs), and the fastest counts; the same seed gives the same text."""
    runs: dict[str, list[dict]] = {"default": [], "autoregressive": []}
    for r in range(repeats + 1):
        for name in (("default", "autoregressive") if r % 2 else ("autoregressive", "default")):
            strategy = None if name == "default" else name
            runs[name].append(pipe.generate(PROMPT, length=length, seed=seed, strategy=strategy))
    fast = min(runs["default"][1:], key=lambda out: out["seconds"])
    ar = min(runs["autoregressive"][1:], key=lambda out: out["seconds"])
    print(f"\ngenerate ({fast['strategy']}, {length} tokens):\n  {fast['text']}")
    rate, ar_rate = len(fast["token_ids"]) / fast["seconds"], len(ar["token_ids"]) / ar["seconds"]
    stats = fast["stats"] or {}
    drafting = (f" ({stats['draft_rounds']} drafting rounds, {stats['causal_steps']} causal steps)"
                if "draft_rounds" in stats else "")
    print(f"  {fast['network_calls']} network calls{drafting}, {rate:.0f} tokens/s; left-to-right: "
          f"{ar['network_calls']} calls, {ar_rate:.0f} tokens/s ({rate / ar_rate:.1f}x)")


def show_accuracy(pipe, cfg) -> None:
    """Held-out masked-token accuracy, read where the model was trained to predict, vs the unigram baseline."""
    result = heldout_accuracy(pipe, cfg, tuple(range(MASKINGS)))
    print(f"\nheld-out masked-token accuracy (15% masked, {MASKINGS} maskings, {result['eval_tokens']:,} tokens): "
          f"{result['eval_accuracy']:.1%}")
    print(f"unigram baseline (always {result['baseline_token']!r}): {result['baseline_accuracy']:.1%}")


def heldout_accuracy(pipe, cfg, mask_seeds: tuple[int, ...] = (0,)) -> dict:
    """Masked-token accuracy on the run's held-out rows (15% masked, read where the model predicts: one to
    the left after ``mntp``), pooled over one masking per seed in ``mask_seeds`` -> {eval_accuracy,
    eval_tokens, baseline_accuracy, baseline_token}."""
    # lazy: torch-backed evaluation, loaded with the rest of the demo
    from masklm.data.packing import split_documents
    from masklm.data.shards import ShardedCorpus
    from masklm.training.evaluate import evaluate_mlm, heldout_rows

    corpus = ShardedCorpus(Path(cfg.out) / "data")
    train_docs, _ = split_documents(corpus.num_documents, cfg.heldout_fraction, cfg.seed)
    baseline_id = most_frequent_token(corpus, train_docs, pipe.tokenizer.special_ids)
    heldout = heldout_rows(corpus, heldout_fraction=cfg.heldout_fraction, seed=cfg.seed, seq_len=cfg.seq_len,
                           pad_id=pipe.tokenizer.pad_id)
    right, base, tokens = 0.0, 0.0, 0
    for seed in mask_seeds:
        result = evaluate_mlm(pipe.model, heldout, pipe.tokenizer, batch_size=cfg.batch_size,
                              max_batches=cfg.eval_batches, seed=cfg.seed + seed, baseline_id=baseline_id,
                              shift=bool(pipe.mask_shift))
        right += result["eval_accuracy"] * result["eval_tokens"]
        base += result["baseline_accuracy"] * result["eval_tokens"]
        tokens += int(result["eval_tokens"])
    return {"eval_accuracy": right / max(tokens, 1), "eval_tokens": tokens,
            "baseline_accuracy": base / max(tokens, 1), "baseline_token": pipe.tokenizer.id_to_token(baseline_id)}


def most_frequent_token(corpus, doc_indices, special_ids) -> int:
    """The commonest non-special token over the given documents (the unigram baseline's guess)."""
    counts = np.zeros(corpus.vocab_size, dtype=np.int64)
    for i in doc_indices:
        counts += np.bincount(corpus.document(int(i)), minlength=corpus.vocab_size)[:corpus.vocab_size]
    counts[list(special_ids)] = 0
    return int(counts.argmax())
