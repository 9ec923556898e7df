"""``masklm train``: pretrain a model from a TOML config, flags overriding it."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from masklm.training.config import TrainConfig


def _rate(text: str) -> float | str:
    """A mask rate (0.15) or a linear schedule ("0.30->0.15")."""
    try:
        return float(text)
    except ValueError:
        return text


# flag -> (TrainConfig field, type). Only flags the user gives override the config file.
FLAGS: dict[str, tuple[str, type, str]] = {
    "--arch": ("arch", str, "architecture: bert, ltg-bert or gpt-bert"),
    "--size": ("size", str, "size preset: tiny, small, base (ltg-bert also xs)"),
    "--out": ("out", str, "run folder"),
    "--init-from": ("init_from", str, "start from this model folder's weights and tokenizer"),
    "--tokenizer": ("tokenizer", str, "use this tokenizer folder instead of training one"),
    "--tokenizer-kind": ("tokenizer_kind", str, "wordpiece or bpe, when a tokenizer is trained"),
    "--vocab-size": ("vocab_size", int, "vocabulary size, when a tokenizer is trained"),
    "--max-steps": ("max_steps", int, "optimizer steps to run"),
    "--epochs": ("epochs", float, "epochs to run (when --max-steps is not given)"),
    "--batch-size": ("batch_size", int, "rows per micro-batch per process"),
    "--grad-accum": ("grad_accum", int, "micro-batches per optimizer step"),
    "--seq-len": ("seq_len", int, "tokens per packed row"),
    "--seq-len-schedule": ("seq_len_schedule", str, "constant, ltg-bert (x4 length, 1/4 batch for the last 10%%) "
                                                    "or gpt-bert (x2 from 70%%, x4 from 90%%)"),
    "--lr": ("lr", float, "peak learning rate"),
    "--warmup": ("warmup_steps", float, "warmup steps, or a fraction of the run when < 1"),
    "--schedule": ("schedule", str, "LR after warmup: cosine, linear, constant, or the ltg-bert/gpt-bert recipe"),
    "--optimizer": ("optimizer", str, "adamw or lamb"),
    "--no-decay": ("no_decay", str, "which parameters skip weight decay: bert, ltg-bert or gpt-bert rules"),
    "--objective": ("objective", str, "mlm, clm, mntp, diffusion; an AntLM schedule clm:4,mlm:16,clm:4; "
                                      "or a mix mntp=15,clm=1"),
    "--schedule-unit": ("schedule_unit", str, "unit of AntLM phase lengths: epochs, steps or tokens"),
    "--masking": ("masking", str, "token, whole-word or span"),
    "--mask-rate": ("mask_rate", _rate, "share of tokens to predict, or a schedule like 0.30->0.15"),
    "--seed": ("seed", int, "random seed"),
    "--save-every": ("save_every", int, "write a checkpoint every N steps (0: never)"),
    "--keep-last": ("keep_last", int, "checkpoints to keep"),
    "--eval-every": ("eval_every", int, "held-out evaluation every N steps (0: only at the end)"),
    "--log-every": ("log_every", int, "write metrics every N steps"),
    "--heldout-fraction": ("heldout_fraction", float, "share of documents held out"),
    "--device": ("device", str, "cpu, cuda, cuda:N (default: cuda when available)"),
    "--time-limit": ("time_limit", float, "stop within this many minutes"),
    "--precision": ("precision", str, "fp32 (default; TF32 matmuls on CUDA), bf16, or fp16 (with a loss scaler); "
                                      "autocast with fp32 master weights"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="pretrain a model on a corpus",
                       description="Pretrain a masked language model. Flags override --config.")
    p.add_argument("--config", help="TOML file with TrainConfig fields ([model] table for sizes)")
    p.add_argument("--corpus", nargs="+", help="text files, folders, .jsonl(.gz) or built-in names (kjv)")
    for flag, (_, typ, text) in FLAGS.items():
        p.add_argument(flag, type=typ, help=text, default=None)
    p.add_argument("--resume", action="store_true", default=None, help="continue from the latest good checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model (slow first steps)")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    # lazy: checking a TrainConfig imports torch; `masklm --help` need not
    from masklm.training.config import TrainConfig

    overrides = {field: getattr(args, flag[2:].replace("-", "_"))
                 for flag, (field, _, _) in FLAGS.items()
                 if getattr(args, flag[2:].replace("-", "_")) is not None}
    if args.corpus:
        overrides["corpus"] = args.corpus
    if args.resume:
        overrides["resume"] = True
    if args.no_progress:
        overrides["progress"] = False
    if args.compile:
        overrides["compile"] = True
    if isinstance(overrides.get("warmup_steps"), float) and overrides["warmup_steps"] >= 1:
        overrides["warmup_steps"] = int(overrides["warmup_steps"])
    if args.config:
        return TrainConfig.from_toml(args.config, overrides)
    return TrainConfig.from_dict(overrides, where="flags")


def run(args: argparse.Namespace) -> int:
    from masklm.training.trainer import train  # lazy: torch and the models load only when training

    train(config_from_args(args))
    return 0
