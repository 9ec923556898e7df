"""``masklm train``: pretrain a model from a TOML config, flags overriding it."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from masklm.errors import ConfigError

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
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="auto",
                   help="continue the run in --out as recorded in its training_args.json, from its latest good "
                        "checkpoint; only --max-steps, --epochs, --time-limit, --save-every, --eval-every, "
                        "--log-every, --keep-last, --device, --compile and --no-progress may differ. "
                        "'--resume auto' (for a job that may be restarted): continue when --out has a checkpoint "
                        "or a final model, else start the run, also over what the same command left before its "
                        "first checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that already holds files, deleting them (never the corpus "
                        "or tokenizer the run reads)")
    p.add_argument("--rebuild-data", action="store_true",
                   help="with --resume: continue on corpus files that changed since the run started")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model (slow first steps)")
    p.set_defaults(func=run)


def _given(args: argparse.Namespace) -> tuple[dict, dict[str, str]]:
    """The fields the user set (a --config file's keys, then the flags over them) -> (fields, how each
    was given: ``--seq-len`` or ``seq_len in run.toml``, for messages)."""
    # lazy: read_toml lives beside ModelConfig, which `masklm --help` need not import
    from masklm.config import read_toml

    given, names = {}, {}
    if args.config:
        given = read_toml(args.config)
        names = {key: f"{key} in {args.config}" for key in given}
    for flag, (field, _, _) in FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            given[field], names[field] = value, flag
    if args.corpus:
        given["corpus"], names["corpus"] = args.corpus, "--corpus"
    if isinstance(given.get("warmup_steps"), float) and given["warmup_steps"] >= 1:
        given["warmup_steps"] = int(given["warmup_steps"])
    for flag, field, value in (("--overwrite", "overwrite", True), ("--rebuild-data", "rebuild_data", True),
                               ("--no-progress", "progress", False), ("--compile", "compile", True)):
        if getattr(args, flag[2:].replace("-", "_")):
            given[field], names[field] = value, flag
    if args.resume is True:  # --resume auto decides in config_from_args
        given["resume"], names["resume"] = True, "--resume"
    return given, names


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's config: with --resume, the run folder's record with the given flags applied (a flag that
    would change the run is refused, naming it); else the config file and the flags over the defaults."""
    # lazy: checking a TrainConfig imports torch; `masklm --help` need not
    from masklm.training.config import TrainConfig
    from masklm.training.run_record import resume_config  # lazy: as above

    given, names = _given(args)
    where = args.config or "flags"
    if args.resume not in (None, True, "auto"):
        raise ConfigError(f"--resume takes no value, or 'auto'; got {args.resume!r}")
    if args.resume == "auto":
        return _resume_or_start(_from_init(given, names), names, where)
    if args.resume:
        TrainConfig.from_dict(given, where=where)  # bad values are named where they were given
        return resume_config(given, names)
    return TrainConfig.from_dict(_from_init(given, names), where=where)


# what --init-from's folder decides: a run started from it cannot also choose these
FROM_INIT = ("arch", "size", "model", "tokenizer", "tokenizer_kind", "vocab_size")


def _from_init(given: dict, names: dict[str, str]) -> dict:
    """With --init-from, the model and tokenizer are that folder's: a setting that would choose another is
    refused, naming it (it was ignored, yet recorded in training_args.json as if used), and the run's record
    takes the folder's architecture -> ``given`` with ``arch`` set."""
    if not given.get("init_from"):
        return given
    from masklm.modeldir import read_config  # lazy: as the other training imports here

    clash = [names[key] for key in FROM_INIT if key in given]
    if clash:
        raise ConfigError(f"{names['init_from']} {given['init_from']} starts from that folder's model and tokenizer; "
                          f"leave out {', '.join(clash)} ({'it' if len(clash) == 1 else 'they'} would be ignored)")
    return given | {"arch": read_config(given["init_from"]).get("arch", "bert")}


class _Finished(Exception):
    """``--resume auto`` on a run that has ended: the job is done (exit 0, one line), not refused."""


def _resume_or_start(given: dict, names: dict[str, str], where: str) -> TrainConfig:
    """``--resume auto``, one command for a job that may be restarted at any point (a cluster's requeue):
    continue the run in --out when it has a checkpoint or a final model (as ``--resume``); else start it, in
    an --out that is absent or empty, or that holds only what the same command left before its first
    checkpoint (a record of these very settings; a changed flag is refused, naming it). That is deleted
    first, as ``--overwrite`` would; a folder holding anything else is refused as a new run's would be."""
    # lazy: checking a TrainConfig imports torch, as in config_from_args
    from masklm.training import checkpoint as ckpt
    from masklm.training.config import TrainConfig
    from masklm.training.run_folder import finished_at, held_files, keeps_length
    from masklm.training.run_record import (
        LENGTH_FIELDS,
        RECORD_FILE,
        check_same_run,
        read_record,
        resume_config,
    )

    if given.get("overwrite"):
        raise ConfigError("--resume auto keeps what a run saved and --overwrite deletes it; pass only one of them")
    cfg = TrainConfig.from_dict(given, where=where)
    run_dir = Path(cfg.out)
    checkpoints = ckpt.list_checkpoints(run_dir)
    if (run_dir / "final" / "model.safetensors").is_file() and not checkpoints:
        record = read_record(run_dir) or {}
        if any(key in given and given[key] != record.get(key) for key in LENGTH_FIELDS):
            ckpt.resume_point(run_dir)  # a longer run asked of one without checkpoints: says --init-from
        raise _Finished(f"the run in {run_dir} is finished (final/, no checkpoints); nothing to do")
    if checkpoints or (run_dir / "final").exists():
        resumed = resume_config(given, names)
        state = json.loads((ckpt.resume_point(run_dir, log=lambda _m: None) / "trainer_state.json").read_text())
        done, total = finished_at(run_dir, state["step"]), state["schedule_total_steps"]
        if done is not None and keeps_length(resumed, state) and done >= total:  # a requeued job that had ended
            raise _Finished(f"the run in {run_dir} is finished ({done} of {total} steps); nothing to do")
        return resumed
    record = read_record(run_dir) if held_files(run_dir) else None
    if record is None:  # nothing there (or prepared shards), or files no run of ours wrote: a new run's rules
        return cfg
    check_same_run(record, cfg, str(run_dir / RECORD_FILE), names)
    if os.environ.get("RANK", "0") == "0":
        print(f"masklm: {run_dir} holds the start of this run, stopped before its first checkpoint; starting it "
              "again from the beginning (--resume auto)", file=sys.stderr)
    return TrainConfig.from_dict(given | {"overwrite": True}, where=where)


def run(args: argparse.Namespace) -> int:
    from masklm.training.trainer import train  # lazy: torch and the models load only when training

    try:
        cfg = config_from_args(args)
    except _Finished as done:
        if os.environ.get("RANK", "0") == "0":  # once, not once per torchrun process
            print(f"masklm: {done}", file=sys.stderr)
        return 0
    try:
        train(cfg)
    except KeyboardInterrupt:  # Ctrl-C: say what a --resume continues from; main then says "interrupted"
        from masklm.training.checkpoint import what_is_kept  # lazy: torch is loaded by now anyway

        if Path(cfg.out).is_dir() and os.environ.get("RANK", "0") == "0":
            print(f"{cfg.out}: {what_is_kept(Path(cfg.out), cfg.save_every)}", file=sys.stderr)
        raise
    return 0
