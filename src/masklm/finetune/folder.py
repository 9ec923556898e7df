"""Fine-tuned model folders, and the loader that reads a model folder of either kind.

A fine-tuned folder is a pretrained one whose ``config.json`` also holds a ``task`` block (see
``masklm.finetune.heads``); its weights are the encoder's plus ``head.*``. ``masklm.modeldir`` reads and
writes the files and builds no task heads; the choice between the two loaders is made here, above it,
for ``masklm.load``, ``masklm finetune`` (a fine-tuned folder can be fine-tuned again) and ``export-hf``.

``OutputGuard`` keeps a fine-tuning run from replacing an ``--out`` folder it did not write: the run saves
its best model there after every better epoch, each save replacing the folder whole, so a second run
started into the same ``--out`` (a job launched twice) would otherwise replace the first one's model,
and the first the second's, until one ends. Each save records the run's id in ``training_args.json``;
before a save the guard reads whose folder ``--out`` is.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import torch

from masklm.config import ModelConfig
from masklm.errors import ConfigError, ModelDirError
from masklm.finetune.heads import FineTunedConfig, FineTunedModel, build_finetuned, check_task
from masklm.modeldir import (
    CONFIG_FILE,
    TRAINING_ARGS_FILE,
    check_sizes,
    config_from_json,
    is_finetuned,
    load_model_dir,
    load_state,
    load_tokenizer,
    read_config,
)
from masklm.models import build_model
from masklm.tokenizer import Tokenizer


def load_finetuned(folder: Path, data: dict[str, Any], device: str | torch.device | None = None
                   ) -> tuple[FineTunedModel, FineTunedConfig, Tokenizer]:
    """Load a fine-tuned folder (config.json data already read) -> ``(model in eval mode, config, tokenizer)``."""
    where = str(folder / CONFIG_FILE)
    task = check_task(data.get("task"), where)
    base_config = config_from_json({k: v for k, v in data.items() if k != "task"}, where=where)
    tokenizer = load_tokenizer(folder, base_config)
    check_sizes(folder, base_config)
    try:
        model = build_finetuned(build_model(base_config), task)
    except ConfigError as exc:
        raise ModelDirError(f"{where}: {exc}") from None
    load_state(model, folder, device)
    return model, model.config, tokenizer


def load_folder(path: str | Path, device: str | torch.device | None = None
                ) -> tuple[torch.nn.Module, ModelConfig, Tokenizer]:
    """Load a pretrained or a fine-tuned model folder -> ``(model in eval mode, config, tokenizer)``;
    ``device`` None means CPU."""
    folder = Path(path)
    data = read_config(folder)
    if is_finetuned(data):
        return load_finetuned(folder, data, device)
    return load_model_dir(folder, device)


class OutputGuard:
    """Whose folder ``out`` is, checked before each save: ``check()`` raises ConfigError (the run stops,
    nothing is replaced) when ``out`` holds files that this run did not write and that were not there when
    it started (those the caller allowed: ``--overwrite``); ``saved()`` after each save. ``run_id`` goes into
    the saved folder's ``training_args.json`` (its ``finetune`` block)."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.run_id = uuid.uuid4().hex
        self.ours = False  # the folder holds this run's last save
        self.found = self._owner()  # what was there when the run started (None: nothing)

    def _owner(self) -> str | None:
        """The run id of the fine-tuning run that wrote ``out``; "" for files without one; None when
        ``out`` is absent or empty."""
        if not self.out.exists() or (self.out.is_dir() and not any(self.out.iterdir())):
            return None
        try:
            record = json.loads((self.out / TRAINING_ARGS_FILE).read_text(encoding="utf-8"))
            return str(record["finetune"]["run_id"])
        except (OSError, ValueError, KeyError, TypeError):
            return ""

    def check(self) -> None:
        owner = self._owner()
        if owner is None or owner == self.run_id or (not self.ours and owner == self.found):
            return
        what = f"the fine-tuning run {owner}" if owner else "files"
        raise ConfigError(f"--out {self.out} was written by {what} while this run trained; this run stops "
                          "without replacing it: wait for that run to end, or fine-tune into another --out")

    def saved(self) -> None:
        self.ours = True
