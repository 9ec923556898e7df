"""``masklm eval minimal-pairs``: BLiMP-style accuracy (good sentence must score higher); ``masklm eval
test``: a fine-tuned model's metrics on a labelled file (``finetune.splits``)."""

from __future__ import annotations

import argparse
import json
import sys

from masklm.errors import InputError
from masklm.files import check_writable
from masklm.scoring.pll import METRICS
from masklm.wording import counted


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model (minimal pairs, or a fine-tuned model on a labelled file)",
                       description="Evaluations of a model folder: zero-shot minimal pairs, or a fine-tuned "
                                   "model's metrics on a labelled test file.")
    tasks = p.add_subparsers(dest="task", metavar="<task>", parser_class=type(p))
    mp = tasks.add_parser(
        "minimal-pairs", help="BLiMP-format minimal-pair accuracy",
        description="Score both sentences of each pair; a pair is correct iff sentence_good scores strictly "
                    "higher (ties count as wrong and are reported). Reports accuracy overall, per field and "
                    "per paradigm (UID, or the file name when records have none).")
    mp.add_argument("--model", required=True, help="model folder")
    mp.add_argument("--data", nargs="+", metavar="PATH",
                    help="BLiMP-format .jsonl files or folders of them (default: the small set shipped with masklm)")
    mp.add_argument("--metric", choices=METRICS,
                    help="default: the metric that fits how the model was trained "
                    "(mntp for GPT-BERT-style mntp models, causal for causal LMs, else pll)")
    mp.add_argument("--reduction", choices=["sum", "mean"], default="sum",
                    help="sum (default) or mean of token log-probabilities")
    mp.add_argument("--batch-tokens", type=int,
                   help="tokens per forward batch (default 4096 on CPU, 65536 on GPU)")
    mp.add_argument("--device", help="cpu, cuda or cuda:N")
    mp.add_argument("--json", action="store_true", help="print the result as JSON")
    mp.add_argument("--details", action="store_true", help="with --json: include every pair's two scores")
    mp.add_argument("--plot", metavar="FILE.png", help="write a per-paradigm accuracy bar chart")
    mp.set_defaults(func=run_minimal_pairs)
    test = tasks.add_parser(
        "test", help="a fine-tuned model's metrics on a labelled file",
        description="Read a labelled file as 'masklm finetune' reads its --validation file (the columns, labels "
                    "and windows the folder was fine-tuned with) and report the task's metrics: accuracy, macro F1 and "
                    "MCC, Pearson and Spearman, entity F1, or SQuAD's exact match and F1.")
    test.add_argument("--model", required=True, help="fine-tuned model folder")
    test.add_argument("--data", required=True, metavar="FILE", help=".csv/.tsv/.jsonl (tagging: CoNLL or .jsonl; "
                                                                     "question answering: SQuAD .json or .jsonl)")
    test.add_argument("--text-column", help="default: the one the folder was fine-tuned with")
    test.add_argument("--text-pair-column", help="default: the one the folder was fine-tuned with")
    test.add_argument("--label-column", help="default: the one the folder was fine-tuned with")
    test.add_argument("--batch-size", type=int, default=32)
    test.add_argument("--device", help="cpu, cuda or cuda:N")
    test.add_argument("--json", action="store_true", help="print the result as JSON")
    test.set_defaults(func=run_test)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])


def run_minimal_pairs(args: argparse.Namespace) -> int:
    # lazy: the model stack loads only when this command runs
    from masklm.inference.pipeline import load
    from masklm.scoring import minimal_pairs

    if args.plot and not args.plot.lower().endswith(".png"):
        raise InputError(f"--plot {args.plot}: the chart is a PNG; give a file name ending in .png")
    if args.plot:
        check_writable(args.plot, "--plot")  # before the pairs are scored, not after
    pairs = minimal_pairs.read_pairs(args.data)
    pipe = load(args.model, device=args.device)
    metric = pipe.resolve_metric(args.metric)
    print(f"masklm: scoring {counted(len(pairs), 'pair')} with {metric} ({args.reduction})", file=sys.stderr)
    result = minimal_pairs.evaluate(pipe, pairs, metric=metric, reduction=args.reduction,
                                    batch_tokens=args.batch_tokens, details=args.details)
    if args.plot:
        minimal_pairs.plot(result, args.plot)
        print(f"masklm: wrote {args.plot}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        print(minimal_pairs.format_report(result))
    return 0


def run_test(args: argparse.Namespace) -> int:
    # lazy: the model stack loads only when this command runs
    from masklm.finetune.splits import evaluate, labelled_split
    from masklm.inference.pipeline import load

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    pipe = load(args.model, device=args.device)
    task = getattr(pipe.model, "task", None)
    if task is None:
        raise InputError(f"{args.model} is not a fine-tuned model (no task head); fine-tune it with 'masklm "
                         "finetune', or evaluate it with 'masklm eval minimal-pairs'")
    columns = (args.text_column, args.text_pair_column, args.label_column)
    split = labelled_split(task, pipe.tokenizer, args.data, pipe.max_length, columns, args.model)
    for note in split.notes(args.data, pipe.tokenizer.unk_id):
        print(f"masklm: {note}", file=sys.stderr)
    counts = split.windows()
    print(f"masklm: {counted(counts['examples'], 'example')} in {args.data}"
          + (f", read as {counted(counts['windows'], 'window')}" if counts["windows"] != counts["examples"] else ""),
          file=sys.stderr)
    metrics = evaluate(pipe.model, split, pipe.tokenizer.pad_id, args.batch_size)
    if args.json:
        print(json.dumps({"model": args.model, "data": args.data, "task": task["type"], **counts, **metrics}))
    else:
        for name, value in metrics.items():
            print(f"{name}\t{value:.4f}")
    return 0

