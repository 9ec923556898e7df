"""Fine-tuned model folders, and the loader that reads a model folder of either kind.

A fine-tuned folder is a pretrained one whose ``config.json`` also holds a ``task`` block (see
``masklm.finetune.heads``); its weights are the encoder's plus ``head.*``. ``masklm.modeldir`` reads and
writes the files and builds no task heads; the choice between the two loaders is made here, above it,
for ``masklm.load``, ``masklm finetune`` (a fine-tuned folder can be fine-tuned again) and ``export-hf``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from masklm.config import ModelConfig
from masklm.errors import ConfigError, ModelDirError
from masklm.finetune.heads import FineTunedConfig, FineTunedModel, build_finetuned, check_task
from masklm.modeldir import (
    CONFIG_FILE,
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
