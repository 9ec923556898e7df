"""``masklm finetune``: train a classification, regression or BIO tagging head on a pretrained model."""

from __future__ import annotations

import argparse
import json

from masklm.files import check_out
from masklm.finetune.heads import POOLINGS, TASKS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune a model folder for classification, regression or tagging",
        description="Fine-tune a pretrained model folder with a task head (AdamW, linear warmup and decay, "
                    "early stopping on the validation metric) and save the best model as a model folder. "
                    "classification/regression read .csv, .tsv (header row) or .jsonl; tagging reads "
                    "CoNLL-style 'token<TAB>tag' files (blank line between sentences) or .jsonl with "
                    "\"tokens\" and \"tags\", tags in BIO (IOB2). Sequence heads use mean pooling by default; "
                    "tagging reads each word's first sub-token.")
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
    p.add_argument("--pooling", choices=POOLINGS, default="mean", help="sequence pooling (default mean)")
    p.add_argument("--metric", help="validation metric to watch (default accuracy / pearson / entity_f1)")
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print the result summary as JSON on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from masklm.finetune.train import (  # lazy: the trainer loads only when this command runs
        FinetuneArgs,
        finetune,
    )

    check_out(args.out, overwrite=args.overwrite, sources=(args.model,))
    fa = FinetuneArgs(task=args.task, train=args.train, validation=args.validation, out=args.out,
                      text_column=args.text_column, text_pair_column=args.text_pair_column,
                      label_column=args.label_column, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                      patience=args.patience, seed=args.seed, warmup=args.warmup, weight_decay=args.weight_decay,
                      pooling=args.pooling, metric=args.metric, device=args.device)
    result = finetune(args.model, fa)
    if args.json:
        print(json.dumps(result))
    else:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result["validation"].items() if k != "epoch")
        print(f"best epoch {result['best_epoch']}: {shown}\nmodel: {result['out']}")
    return 0
