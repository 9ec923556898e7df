"""What a run folder (``masklm train --out``) may hold before a run writes there, and when a resume may go on.

The rule of the project: no command replaces what a user made unless told to. Before any rank writes,
``check_run_folder`` refuses, with one line that names the folder and the flag that would proceed:

- an ``--out`` that is a file;
- with ``--resume``: a folder without a usable checkpoint (a run finished without checkpoints is pointed
  to ``--init-from``), a config or corpus other than the recorded one (``run_record``), a run that is
  already finished at its length, a ``--max-steps`` below the checkpoint's step, or another number of
  processes than the checkpoint's (a step's rows and their order depend on it);
- without it: a corpus path that does not exist or holds no text files (before a tokenizer is trained on
  it); a folder that holds anything (a run's checkpoints, a finished model, other files) unless
  ``--overwrite``, or one that is, holds or sits inside a folder the run reads (corpus, tokenizer,
  ``--init-from``). A ``data/`` folder of prepared shards alone is not a run (``masklm data prepare`` wrote
  it for this run), and neither is the lock file of a run that is checking the folder right now. A folder
  whose record (``training_args.json``, written first by every new run) shows the start of a run stopped
  before its first checkpoint is named as such, with ``--resume auto`` to start it again.

The trainer (``training.trainer``) calls these; they read the folder and write nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from masklm.data.corpus import resolve_files
from masklm.data.shards import is_shard_folder
from masklm.errors import ConfigError
from masklm.files import LOCK_NAME, PROBE_PREFIX, check_out
from masklm.training import checkpoint as ckpt
from masklm.training import run_record
from masklm.training.config import TrainConfig


def check_run_folder(cfg: TrainConfig, run_dir: Path, log: Callable[[str], None],
                     world_size: int = 1) -> tuple[dict[str, Any] | None, Path | None]:
    """Refuse (ConfigError) what the module docstring lists, before anything is written -> (the run's
    record, the checkpoint to resume from); both None for a fresh run."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file; choose a folder for the run")
    if cfg.resume:
        resume_from = ckpt.resume_point(run_dir, log=log)
        record = run_record.run_record(run_dir)
        where = str(run_dir / run_record.RECORD_FILE)
        run_record.check_same_run(record, cfg, where)
        state = json.loads((resume_from / "trainer_state.json").read_text(encoding="utf-8"))
        if keeps_length(cfg, state):
            refuse_finished(run_dir, state["step"], state["schedule_total_steps"])
        elif cfg.max_steps is not None and cfg.max_steps < state["step"]:  # equal: the final model from there
            raise ConfigError(f"--max-steps {cfg.max_steps} is below step {state['step']}, where {resume_from.name} "
                              f"stands; pass --max-steps {state['step']} or more")
        saved = state.get("world_size")  # each step's rows and their order follow the number of processes
        if saved is not None and saved != world_size:  # (checkpoints before stop 30 do not say)
            raise ConfigError(f"{resume_from.name} was trained by {saved} process{'es' * (saved != 1)} and this resume "
                              f"has {world_size}; a step's rows and their order depend on it, so resume with "
                              f"{saved} (torchrun --nproc-per-node ...), or start a new run into another --out")
        run_record.check_corpus(record, cfg, where)
        return record, resume_from
    resolve_files(cfg.corpus)  # DataError now, not after "training a tokenizer on the corpus"
    sources = [s for s in run_record.resolve_paths({"corpus": cfg.corpus})["corpus"] if Path(s).exists()]
    check_out(run_dir, overwrite=True, sources=(*sources, *filter(None, (cfg.tokenizer, cfg.init_from))))
    held = held_files(run_dir)
    if held and not cfg.overwrite:
        checkpoints = ckpt.list_checkpoints(run_dir)
        what = (f"already has checkpoints (up to {checkpoints[-1].name}); pass --resume to continue it, "
                if checkpoints else
                f"holds a finished run (final/, without checkpoints); train further from its weights with "
                f"--init-from {run_dir / 'final'} --out NEW, or pass "
                if "final" in held else
                f"holds the start of a run stopped before its first checkpoint ({', '.join(held[:3])}); pass "
                "--resume auto to start it again over that, "
                if run_record.read_record(run_dir) is not None else f"holds files ({', '.join(held[:3])}); ")
        raise ConfigError(f"run folder {run_dir} {what}--overwrite to delete it and start afresh, "
                          "or choose another --out")
    return None, None


def held_files(run_dir: Path) -> list[str]:
    """What ``run_dir`` holds, but for a ``data/`` shard folder alone (shards prepared for the run with
    ``masklm data prepare``, reused when they match the corpus and tokenizer), the lock file and another
    process's passing write probe (``files.PROBE_PREFIX``)."""
    if not run_dir.is_dir():
        return []
    names = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME and not p.name.startswith(PROBE_PREFIX))
    if names == ["data"] and is_shard_folder(run_dir / "data"):
        return []
    return names


def keeps_length(cfg: TrainConfig, state: dict[str, Any]) -> bool:
    """Whether this resume leaves the run's length as the checkpoint's config set it."""
    saved = state.get("config") or {}
    return all(saved.get(k) == getattr(cfg, k) for k in run_record.LENGTH_FIELDS)


def finished_at(run_dir: Path, step: int) -> int | None:
    """The step the run's final model was saved at (its ``training_args.json`` says; a checkpoint may be
    older: --save-every need not divide the run's length), at least ``step``; None without a final model."""
    final = run_dir / "final"
    if not (final / "model.safetensors").is_file():
        return None
    try:
        saved = json.loads((final / "training_args.json").read_text(encoding="utf-8")).get("steps")
    except (OSError, ValueError, AttributeError):
        saved = None
    return max(step, saved if isinstance(saved, int) else 0)


def refuse_finished(run_dir: Path, step: int, total: int) -> None:
    """ConfigError when the run has its final model at ``total`` steps or more (``finished_at``, from the
    checkpoint's ``step``): nothing is left to train."""
    done = finished_at(run_dir, step)
    if done is not None and done >= total:
        raise ConfigError(f"the run in {run_dir} is finished ({done} of {total} steps); "
                          f"pass --max-steps above {done} (or --epochs) to train it further")
