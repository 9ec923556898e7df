"""``masklm finetune``: train a classification, regression, BIO tagging or extractive question-answering
head on a pretrained model. The window flags (inputs over the model's maximum) are defined here once and
shared with ``predict`` and ``embed``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from masklm.errors import InputError
from masklm.files import check_out
from masklm.finetune.heads import POOLINGS, TASKS
from masklm.inference.batching import WINDOW_POOLS, WindowSpec
from masklm.wording import counted


def add_window_flags(p: argparse.ArgumentParser, default: str) -> None:
    """``--windows``, ``--stride`` and ``--window-pool``; ``default`` says what happens without them."""
    p.add_argument("--windows", action="store_true",
                   help="read inputs longer than the model's maximum as overlapping windows (nothing is ever "
                        f"cut); --stride or --window-pool also turn windows on. {default}")
    p.add_argument("--stride", type=int,
                   help="tokens shared by consecutive windows: the OVERLAP, as Hugging Face's stride and "
                        "doc_stride (the step between window starts is the window less the stride); default a "
                        "quarter of the window")
    p.add_argument("--window-pool", choices=WINDOW_POOLS,
                   help="how one input's windows combine for sequence outputs (logits, embeddings): their "
                        "elementwise mean (default) or max; tagging reads each word from the window where it "
                        "is most central")


def window_spec(args: argparse.Namespace) -> WindowSpec | None:
    """The WindowSpec the window flags ask for; None when none of them was given."""
    if not (args.windows or args.stride is not None or args.window_pool is not None):
        return None
    return WindowSpec(args.stride, args.window_pool or "mean")


def report_windows(counts: list[int]) -> None:
    """One stderr line: how many windows the inputs took."""
    if counts:
        print(f"masklm: {counted(len(counts), 'input')} read as {counted(sum(counts), 'window')} (at most "
              f"{max(counts)} per input, "
              f"{sum(c > 1 for c in counts)} longer than the model's maximum)", file=sys.stderr)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune a model folder for classification, regression, tagging or question answering",
        description="Fine-tune a pretrained model folder with a task head (AdamW, linear warmup and decay, "
                    "early stopping on the validation metric) and save the best model as a model folder. "
                    "classification/regression read .csv, .tsv (header row) or .jsonl; tagging reads "
                    "CoNLL-style 'token<TAB>tag' files (blank line between sentences) or .jsonl with "
                    "\"tokens\" and \"tags\", tags in BIO (IOB2). Sequence heads use mean pooling by default; "
                    "tagging reads each word's first sub-token. question-answering reads SQuAD .jsonl "
                    "({\"question\", \"context\", \"answers\": {\"text\": [...], \"answer_start\": [...]}} per "
                    "line) or SQuAD v1.1/v2.0 .json, and learns start/end logits over windows of the context; its "
                    "validation metrics are SQuAD's exact match and F1.")
    p.add_argument("--model", required=True, help="pretrained model folder")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--train", required=True, help="training file")
    p.add_argument("--validation", required=True, help="validation file (early stopping, best model)")
    p.add_argument("--out", required=True, help="folder for the best model")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already holds files")
    p.add_argument("--text-column", help="text column (default text; tagging JSONL: tokens)")
    p.add_argument("--text-pair-column", help="second text of a pair (optional)")
    p.add_argument("--label-column", help="label column (default label; tagging JSONL: tags)")
    p.add_argument("--epochs", type=int, default=10, help="at most this many epochs (default 10)")
    p.add_argument("--lr", type=float, default=3e-5, help="peak learning rate (default 3e-5)")
    p.add_argument("--batch-size", type=int, default=32, help="default 32")
    p.add_argument("--patience", type=int, default=3,
                   help="stop after this many epochs without a better validation metric (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=float, default=0.1, help="warmup fraction of the steps (default 0.1)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--pooling", choices=POOLINGS, help="classification and regression: sequence pooling (default "
                                                        "mean; cls for a head transformers loads after export-hf)")
    p.add_argument("--metric", help="validation metric to watch (default accuracy / pearson / entity_f1 / f1)")
    add_window_flags(p, "Default: an input over the maximum is an error (question answering: always windows).")
    p.add_argument("--max-answer-length", type=int,
                   help="question answering: the longest answer span, in tokens (default 30)")
    p.add_argument("--null-threshold", type=float,
                   help="question answering: answer '' (no answer) when the [CLS] score beats the best span's "
                        "start + end score by more than this; default 0.0 if the training file has questions "
                        "without answers (SQuAD v2.0), else never; stored in the folder for predict")
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32",
                   help="fp32 (default; TF32 matmuls on CUDA), bf16, or fp16 (with a loss scaler): autocast over "
                        "fp32 weights, as masklm train")
    p.add_argument("--json", action="store_true", help="print the result summary as JSON on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from masklm.finetune.train import (  # lazy: the trainer loads only when this command runs
        FinetuneArgs,
        finetune,
    )

    _check_task_flags(args)
    check_out(args.out, overwrite=args.overwrite, sources=(args.model, args.train, args.validation))
    fa = FinetuneArgs(task=args.task, train=args.train, validation=args.validation, out=args.out,
                      text_column=args.text_column, text_pair_column=args.text_pair_column,
                      label_column=args.label_column, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                      patience=args.patience, seed=args.seed, warmup=args.warmup, weight_decay=args.weight_decay,
                      pooling=args.pooling or "mean", metric=args.metric, device=args.device, precision=args.precision,
                      **_window_args(args))
    result = finetune(args.model, fa)
    if args.json:
        print(json.dumps(result))
    else:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result["validation"].items() if k != "epoch")
        print(f"best epoch {result['best_epoch']}: {shown}\nmodel: {result['out']}")
        for name, counts in (result["windows"] or {}).items():
            print(f"{name}: {counts['examples']} examples as {counts['windows']} windows "
                  f"(at most {counts['max_per_example']} per example)")
    return 0


def _window_args(args: argparse.Namespace) -> dict[str, Any]:
    spec = window_spec(args)
    longest = {} if args.max_answer_length is None else {"max_answer_length": args.max_answer_length}
    return {"windows": spec is not None, "stride": args.stride, "window_pool": args.window_pool or "mean",
            "null_threshold": args.null_threshold, **longest}


# flags that only some tasks read -> those tasks (a flag given for another task would be ignored: refused)
TASK_FLAGS = {"--pooling": ("classification", "regression"), "--window-pool": ("classification", "regression"),
              "--max-answer-length": ("question-answering",), "--null-threshold": ("question-answering",)}


def _check_task_flags(args: argparse.Namespace) -> None:
    """InputError (one line) for a flag that the task never reads (``TASK_FLAGS``)."""
    for flag, tasks in TASK_FLAGS.items():
        if getattr(args, flag[2:].replace("-", "_")) is not None and args.task not in tasks:
            raise InputError(f"{flag} is for {' and '.join(tasks)}, not {args.task}; leave it out")
