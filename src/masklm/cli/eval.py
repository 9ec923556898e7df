"""``masklm eval minimal-pairs``: BLiMP-style accuracy (good sentence must score higher)."""

from __future__ import annotations

import argparse
import json
import sys

from masklm.errors import InputError
from masklm.files import check_writable
from masklm.scoring.pll import METRICS
from masklm.wording import counted


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model (minimal pairs)",
                       description="Zero-shot evaluations of a model folder.")
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
