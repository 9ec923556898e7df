"""Training checkpoints: written atomically, verified on load, older ones pruned.

A checkpoint is a folder ``checkpoints/step-N/`` holding the model (safetensors), the optimizer state,
the trainer state (step, schedule, data position) and the RNG states. It is written under a temporary
name with a ``manifest.json`` of each file's size and sha256 written last; every file is flushed to disk,
and only then is the folder renamed into place (``masklm.files.atomic_dir``). A folder without a valid manifest is never used:
``latest_good`` falls back to the newest checkpoint that verifies.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from masklm.errors import ConfigError
from masklm.files import atomic_dir, known_sha256, sha256_file

MANIFEST = "manifest.json"
FILES = ("model.safetensors", "optimizer.pt", "rng.pt", "trainer_state.json")


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors and plain numbers, so they load with ``weights_only=True``."""
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "python": [int(py_version), torch.tensor(py_state, dtype=torch.int64), py_gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in py_state.tolist()), py_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict[str, Any], keep_last: int) -> Path:
    """Write ``checkpoints/step-{step}`` atomically and prune all but the newest ``keep_last``."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step}"
    with atomic_dir(final) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2), encoding="utf-8")
        manifest = {"step": step, "files": {n: {"bytes": (tmp / n).stat().st_size,
                                                "sha256": sha256_file(tmp / n)} for n in FILES}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    # Prune only checkpoints older than this one: after a resume past damaged newer ones (which were
    # skipped), pruning by rank alone kept those and deleted each fresh checkpoint as it was written.
    older = [p for p in list_checkpoints(run_dir) if step_of(p) < step]
    for old in older[:max(0, len(older) - (keep_last - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def step_of(path: Path) -> int:
    """The step of a ``checkpoints/step-N`` folder."""
    return int(Path(path).name[5:])


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete-looking checkpoint folders, oldest first (temporary folders are never listed)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit():
            found.append((int(p.name[5:]), p))
    return [p for _, p in sorted(found)]


def what_is_kept(run_dir: Path, save_every: int = 0) -> str:
    """For a run that stops early: the checkpoint ``--resume`` continues from, or that none was written
    (and, when the run saved none at all, how to keep some)."""
    kept = list_checkpoints(run_dir)
    return (f"the last checkpoint, {kept[-1]}, is kept (--resume continues from it)" if kept
            else "no checkpoint was written before it" + ("" if save_every else " (--save-every N keeps some)")
                 + "; the same command with --resume auto starts the run again over what it left, as --overwrite "
                   "does")


def verify(path: Path) -> str | None:
    """None when the checkpoint's manifest matches its files, else what is wrong."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return "no manifest (the write did not finish)"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        for name, meta in manifest["files"].items():
            f = path / name
            if not f.is_file():
                return f"{name} is missing"
            # hashed once per process while unchanged: --resume auto, the resume's record and the trainer
            # each look for the checkpoint to continue from
            if f.stat().st_size != meta["bytes"] or known_sha256(f) != meta["sha256"]:
                return f"{name} does not match its checksum"
    except (ValueError, KeyError, TypeError) as exc:
        return f"unreadable manifest ({exc})"
    return None


def latest_good(run_dir: Path, log=print) -> Path | None:
    """The newest checkpoint that verifies; broken ones are reported and skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        problem = verify(path)
        if problem is None:
            return path
        log(f"skipping checkpoint {path}: {problem}")
    return None


def resume_point(run_dir: Path, log=print) -> Path:
    """The checkpoint ``--resume`` continues from: the newest that verifies. ConfigError (exit 2) when there
    is none, before anything is written or deleted."""
    found = latest_good(run_dir, log=log)
    if found is not None:
        return found
    damaged = list_checkpoints(run_dir)
    if not damaged and (Path(run_dir) / "final" / "model.safetensors").is_file():
        raise ConfigError(f"--resume: the run in {run_dir} finished without checkpoints (--save-every 0 keeps "
                          "none), so there is no optimizer state to continue from; train further from its weights "
                          f"with --init-from {Path(run_dir) / 'final'} --out NEW")
    what = (f"all {len(damaged)} checkpoints fail their checks ({', '.join(p.name for p in damaged)})"
            if damaged else "no checkpoint was written")
    raise ConfigError(f"--resume: nothing to resume in {run_dir}: {what}; nothing was changed. Start afresh with "
                      "--overwrite, or choose another --out")


def check_matches(path: Path, model: nn.Module) -> None:
    """ConfigError naming the checkpoint and the first tensor whose name or shape differs from ``model``'s
    (the run's flags build another model than the one saved), read from the file's header only."""
    fix = "resume with the model and tokenizer settings the run was started with, or choose another --out"
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
        stored = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    # Tied tensors are stored once (safetensors drops the copies), so a name missing from the file is
    # left to load_model; a stored tensor the model lacks, or one of another shape, is a mismatch.
    for name in sorted(stored):
        if expected.get(name) != stored[name]:
            raise ConfigError(f"checkpoint {path} does not match the model being resumed: tensor {name!r} has "
                              f"shape {stored.get(name, 'none')} in its model.safetensors, the model "
                              f"{expected.get(name, 'none')}; {fix}")


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, optimizer and RNG states in place; returns the trainer state."""
    device = next(model.parameters()).device
    check_matches(path, model)
    try:
        load_model(model, str(path / "model.safetensors"), device=str(device))
    except RuntimeError as exc:  # a tensor the file lacks: name the first one
        detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise ConfigError(f"checkpoint {path} does not match the model being resumed ({detail[:200]}); "
                          "resume with the settings the run was started with, or choose another --out") from None
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    return json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
