"""Model folders: what ``train`` writes as ``final/`` and what ``load``, ``serve`` and ``export-hf`` read.

A folder holds ``config.json`` (``ModelConfig.to_json_dict()``; for BERT a valid Hugging Face
``BertConfig``), ``model.safetensors``, ``tokenizer.json`` + ``tokenizer_config.json``, ``checksums.json``
and, when trained here, ``training_args.json``. For ``arch = "bert"`` it loads as is with
``transformers.AutoModelForMaskedLM.from_pretrained(dir)``: parameter names are Hugging Face's, and the
tied decoder is left out of the file exactly as Hugging Face leaves it out. LTG-BERT / GPT-BERT folders
also carry the remote-code files of ``masklm.hf.ltg_remote``.

This module only reads and writes folders. A fine-tuned folder (a ``task`` block in ``config.json``,
``is_finetuned``) holds an encoder with a task head, which is built above this module:
``masklm.finetune.folder.load_folder`` picks the loader for ``masklm.load``, ``finetune`` and ``export-hf``.

Content checksums: ``checksums.json`` records the size and sha256 of ``model.safetensors`` and
``tokenizer.json``; loading checks them (after the checks that name a problem more precisely: a missing
tensor, a wrong shape), so a damaged or swapped file is one error naming it instead of silent garbage.
A model load reads every byte of the weights anyway, so the hash is one more pass over data in the page
cache, done once per process (``files.check_record``). Folders without the file (older masklm, other
tools) load unchecked. The JSON settings files are not checksummed, since editing them is legitimate;
their fields are range-checked instead (``ModelConfig.validate``, ``Tokenizer.load``, ``read_objectives``),
and a config.json that describes a model far bigger than its weights file is refused before anything is
built (``check_sizes``).

Writes go to a hidden temporary sibling that is renamed into place (``masklm.files.atomic_dir``), so a
crash never leaves a half-written folder under the final name. Weights are read through safetensors only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from masklm.config import ModelConfig, read_json_object
from masklm.errors import ConfigError, ModelDirError
from masklm.files import atomic_dir, check_record, file_record
from masklm.hf.ltg_remote import add_hf_fields, copy_remote_files, is_ltg_config
from masklm.models import build_model
from masklm.tokenizer import Tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
TRAINING_ARGS_FILE = "training_args.json"
CHECKSUMS_FILE = "checksums.json"
# The files whose sha256 a folder records: the big ones no user edits by hand. The JSON settings files are
# left out on purpose (editing config.json or training_args.json is a normal thing to do), and are checked
# field by field instead.
CHECKSUMMED = (WEIGHTS_FILE, TOKENIZER_FILE)
# A config.json that describes a model more than this many times the size of its weights file is refused
# before anything is built (a typo such as a 10^12 vocabulary or 10^6 layers would exhaust memory first);
# smaller mismatches are built and named tensor by tensor (check_state_dict).
OVERSIZE_FACTOR = 2


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2) + "\n")


def state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of the parameters and persistent buffers, by name."""
    return {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}


def write_model_dir(
    out_dir: str | Path,
    config_json: dict[str, Any],
    state: dict[str, torch.Tensor],
    tokenizer: Tokenizer,
    training_args: dict[str, Any] | None = None,
) -> Path:
    """Atomically write a model folder from its parts (shared by save_model_dir, import and export).

    An existing folder at ``out_dir`` is replaced only once the new one is complete. LTG-BERT / GPT-BERT
    folders also get the Hugging Face remote-code files and ``auto_map`` (``masklm.hf.ltg_remote``), so
    transformers loads them with ``trust_remote_code=True``.
    """
    ltg = is_ltg_config(config_json)
    if ltg:
        config_json = add_hf_fields(config_json)
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise ModelDirError(f"{out} exists and is not a folder; choose another output path or remove it")
    positions = config_json.get("max_position_embeddings")
    if isinstance(positions, int) and tokenizer.model_max_length > positions:  # no input past the positions
        tokenizer = tokenizer.with_max_length(positions)  # (Hugging Face's tokenizer truncates at it)
    with atomic_dir(out) as tmp:
        _write_json(tmp / CONFIG_FILE, config_json)
        # "format": "pt" is what transformers checks before trusting a safetensors file
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        tokenizer.save(tmp)
        if ltg:
            copy_remote_files(tmp)
        if training_args is not None:
            _write_json(tmp / TRAINING_ARGS_FILE, training_args)
        _write_json(tmp / CHECKSUMS_FILE, {"format": "masklm-checksums",
                                           "files": {name: file_record(tmp / name) for name in CHECKSUMMED}})
    return out


def _recorded(folder: Path) -> dict[str, dict[str, Any]]:
    """The folder's ``checksums.json`` (file name -> ``{"bytes", "sha256"}``); empty for a folder without one
    (written by an older masklm, or by another tool), which loads unchecked."""
    path = folder / CHECKSUMS_FILE
    if not path.is_file():
        return {}
    data = read_json_object(path, ModelDirError, "re-save or re-download the model")
    files = data.get("files")
    fine = isinstance(files, dict) and all(
        isinstance(r, dict) and isinstance(r.get("bytes"), int) and isinstance(r.get("sha256"), str)
        for r in files.values())
    if not fine:
        raise ModelDirError(f"{path} is not a masklm checksum list (a 'files' table of bytes and sha256); "
                            "re-save or re-download the model")
    return files


def verify_file(folder: Path, name: str) -> None:
    """ModelDirError naming ``folder/name`` unless it matches the sha256 its folder recorded when saved (a
    file the folder records nothing for passes). Hashed once per process while the file is unchanged."""
    record = _recorded(folder).get(name)
    if record is not None:
        check_record(folder / name, record, ModelDirError,
                     f"re-download or re-save the model (if you replaced the file on purpose, delete {CHECKSUMS_FILE})")


def save_model_dir(
    out_dir: str | Path,
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    training_args: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (with ``model.config``) and ``tokenizer`` as a model folder; returns its path."""
    config: ModelConfig = model.config
    return write_model_dir(out_dir, config.to_json_dict(), state_dict_for_saving(model), tokenizer, training_args)


def read_objectives(model_dir: str | Path | None) -> list[str] | None:
    """The ``objectives`` a model folder was trained with (``training_args.json``), or None if unknown."""
    if model_dir is None:
        return None
    path = Path(model_dir) / TRAINING_ARGS_FILE
    if not path.is_file():
        return None
    objectives = read_json_object(path, ModelDirError, "fix the file or delete it (it is optional)").get("objectives")
    if isinstance(objectives, str):
        objectives = [objectives]
    if objectives is not None and not (isinstance(objectives, list) and all(isinstance(o, str) for o in objectives)):
        raise ModelDirError(f"{path}: 'objectives' must be a list of objective names such as [\"mlm\"], got "
                            f"{objectives!r}; fix the file or delete it (it is optional)")
    return list(objectives) if objectives else None


def read_config(path: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a folder, or a ModelDirError that says what is wrong."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelDirError(
            f"model folder {folder} does not exist; pass a folder written by 'masklm train' (its final/ folder)"
        )
    file = folder / CONFIG_FILE
    if not file.is_file():
        raise ModelDirError(f"no {CONFIG_FILE} in {folder}; pass a model folder written by masklm or export-hf")
    return read_json_object(file, ModelDirError, "fix it or re-save the model")


def is_finetuned(config_json: dict[str, Any]) -> bool:
    """Whether a folder's config.json data describes a fine-tuned model: it has a ``task`` block."""
    return "task" in config_json


def config_from_json(data: dict[str, Any], where: str) -> ModelConfig:
    """A ModelConfig from a folder's config.json data; unknown architectures become ModelDirError."""
    model_type = data.get("model_type")
    if "arch" not in data and model_type not in (None, "bert"):
        raise ModelDirError(
            f"{where} describes a {model_type!r} model, which masklm cannot load; "
            "masklm reads bert, ltg-bert and gpt-bert folders (convert BERT folders with 'masklm import-hf')"
        )
    try:
        return ModelConfig.from_json_dict(data, where=where)
    except ConfigError as exc:
        text = str(exc)
        text = text if text.startswith(where) else f"{where}: {text.removeprefix('model config: ')}"
        raise ModelDirError(f"{text} (in a model folder: fix config.json or re-save the model)") from None


def check_sizes(folder: Path, config: ModelConfig) -> None:
    """Before a model is built for a folder: ModelDirError when config.json describes a model more than
    ``OVERSIZE_FACTOR`` times the parameters of its weights file (read from the file's header only)."""
    file = folder / WEIGHTS_FILE
    if not file.is_file():
        raise ModelDirError(f"no {file.name} in {folder}; the model folder is incomplete, re-save the model")
    try:
        with safe_open(str(file), framework="pt") as handle:
            stored = sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelDirError(f"{file} is not a readable safetensors file ({exc}); re-save the model") from None
    if config.min_parameters() > OVERSIZE_FACTOR * stored:
        raise ModelDirError(
            f"{folder / CONFIG_FILE} describes a model of at least {config.min_parameters():,} parameters "
            f"(vocab_size {config.vocab_size}, hidden_size {config.hidden_size}, num_hidden_layers "
            f"{config.num_hidden_layers}, intermediate_size {config.intermediate_size}) but {file.name} holds "
            f"{stored:,}; the config does not match the weights: fix config.json or re-save the model"
        )


def check_state_dict(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where: str
) -> None:
    """Raise ModelDirError naming the first missing, unexpected or wrongly shaped tensor."""
    fix = "the weights do not match config.json; re-save the model or use the config it was trained with"
    missing = [k for k in expected if k not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelDirError(f"{where} lacks tensor {missing[0]!r}{more}; {fix}")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise ModelDirError(f"{where} has unexpected tensor {unexpected[0]!r}{more}; {fix}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ModelDirError(
                f"{where}: tensor {name!r} has shape {tuple(tensor.shape)} but config.json implies "
                f"{tuple(expected[name].shape)}; {fix}"
            )


def load_weights(file: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file on CPU, or ModelDirError."""
    if not file.is_file():
        raise ModelDirError(f"no {file.name} in {file.parent}; the model folder is incomplete, re-save the model")
    try:
        return load_file(str(file), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelDirError(f"{file} is not a readable safetensors file ({exc}); re-save the model") from None


def read_masklm_version(model_dir: str | Path | None) -> str | None:
    """The masklm version that wrote a folder (``masklm_version`` in its config.json), or None if unknown.

    Loading drops the key (``config.HF_META_KEYS``), so ``ModelConfig`` does not carry it."""
    if model_dir is None or not (Path(model_dir) / CONFIG_FILE).is_file():
        return None
    version = read_config(model_dir).get("masklm_version")
    return version if isinstance(version, str) else None


def load_tokenizer(folder: Path, config: ModelConfig) -> Tokenizer:
    """The folder's tokenizer; ModelDirError when it has more tokens than the model's vocabulary."""
    tokenizer = Tokenizer.load(folder)
    verify_file(folder, TOKENIZER_FILE)
    if tokenizer.vocab_size > config.vocab_size:
        raise ModelDirError(
            f"the tokenizer in {folder} has {tokenizer.vocab_size} tokens but the model only "
            f"{config.vocab_size}; the folder mixes files of different models, re-save it"
        )
    return tokenizer


def load_state(model: torch.nn.Module, folder: Path, device: str | torch.device | None = None) -> torch.nn.Module:
    """Fill ``model`` with the folder's weights (checked name by name), move it to ``device`` (None: stay on
    the CPU) -> the model in eval mode."""
    state = load_weights(folder / WEIGHTS_FILE)
    check_state_dict(state, model.state_dict(), where=str(folder / WEIGHTS_FILE))
    verify_file(folder, WEIGHTS_FILE)  # after the checks that can name what is wrong more precisely
    model.load_state_dict(state, strict=True)
    if device is not None:
        model.to(device)
    return model.eval()


def load_model_dir(
    path: str | Path, device: str | torch.device | None = None
) -> tuple[torch.nn.Module, ModelConfig, Tokenizer]:
    """Load a pretrained model folder -> ``(model in eval mode, config, tokenizer)``; ``device`` None means CPU.

    A fine-tuned folder (a ``task`` block in config.json) is refused here: ``masklm.load`` reads both kinds.
    """
    folder = Path(path)
    data = read_config(folder)
    if is_finetuned(data):
        raise ModelDirError(f"{folder} is a fine-tuned model folder (its config.json has a 'task' block); "
                            "load it with masklm.load, or pass the pretrained folder it was fine-tuned from")
    config = config_from_json(data, where=str(folder / CONFIG_FILE))
    tokenizer = load_tokenizer(folder, config)
    check_sizes(folder, config)
    try:
        model = build_model(config)
    except ConfigError as exc:
        raise ModelDirError(f"{folder / CONFIG_FILE}: {exc}") from None
    return load_state(model, folder, device), config, tokenizer
