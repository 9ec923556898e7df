"""Flags shared by the commands that load a model folder for inference (fill-mask, score, generate, embed,
serve): ``--dtype`` and ``--compile``, and the one call that loads the folder with them and ``--device``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from masklm.inference.pipeline import Pipeline


def add_model_flags(p: argparse.ArgumentParser) -> None:
    # No argparse choices: the names are checked (one line, exit 2) by training.precision.resolve_dtype,
    # which owns them; importing it here would load torch for `masklm --help`.
    p.add_argument("--dtype", help="weights and activations: float32 (default), bfloat16 or float16 "
                                   "(half the memory; faster on GPUs)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (each new input shape compiles first; pays for long runs)")


def load_pipeline(args: argparse.Namespace) -> Pipeline:
    """``masklm.load(args.model)`` with ``--device``, ``--dtype`` and ``--compile``."""
    from masklm.inference.pipeline import load  # lazy: the model stack loads only when a command runs

    return load(args.model, device=args.device, dtype=args.dtype, compile=args.compile)
