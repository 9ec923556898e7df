"""Optimizers (AdamW, LAMB), their parameter groups, and setting the learning rate."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from masklm.errors import ConfigError
from masklm.training.lamb import Lamb

# Parameters whose name contains one of these get no weight decay (biases and norm gains, as in BERT).
NO_DECAY_PATTERNS = ("bias", "LayerNorm", "layer_norm", "norm.weight")

# No-decay name patterns by recipe (research/ltg_bert.md §5.3, §5.4). LTG-BERT also exempts every
# name with "embedding" (word embedding, hence the tied output weight, and the relative table);
# GPT-BERT decays embeddings and the DWA alphas and exempts only biases and layer norms.
NO_DECAY_STYLES: dict[str, tuple[str, ...]] = {
    "bert": NO_DECAY_PATTERNS,
    "ltg-bert": ("bias", "layer_norm", "embedding"),
    "gpt-bert": ("bias", "layer_norm"),
}
OPTIMIZERS = ("adamw", "lamb")


def _no_decay_patterns(no_decay: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(no_decay, str):
        if no_decay not in NO_DECAY_STYLES:
            raise ConfigError(
                f"unknown no-decay style {no_decay!r}; choose one of: {', '.join(NO_DECAY_STYLES)}"
            )
        return NO_DECAY_STYLES[no_decay]
    return tuple(no_decay)


def split_decay(model: nn.Module, no_decay: str | Sequence[str] = "bert"
                ) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """(decayed, not decayed) lists of (name, parameter), by name pattern: a style name from
    ``NO_DECAY_STYLES`` or the patterns themselves. Tied weights appear once, under their first name."""
    patterns = _no_decay_patterns(no_decay)
    decay, exempt, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (exempt if any(s in name for s in patterns) else decay).append((name, p))
    return decay, exempt


def param_groups(model: nn.Module, weight_decay: float, no_decay: str | Sequence[str] = "bert") -> list[dict]:
    """Split parameters into a decayed and a no-decay group by name (see :func:`split_decay`)."""
    decay, exempt = split_decay(model, no_decay)
    return [
        {"params": [p for _, p in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in exempt], "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                    eps: float, *, kind: str = "adamw",
                    no_decay: str | Sequence[str] = "bert") -> torch.optim.Optimizer:
    """AdamW (the fused kernel, on CPU and CUDA alike) or LAMB (multi-tensor), over :func:`param_groups`.

    Fused AdamW makes one pass over each tensor, which on CPU is much faster than the multi-tensor
    kernels and the per-parameter loop; it is also what Hugging Face's Trainer uses by default
    (``adamw_torch_fused``), so benchmarks/train_throughput.py gives both models a fused AdamW.
    """
    groups = param_groups(model, weight_decay, no_decay)
    if kind == "lamb":
        return Lamb(groups, lr=lr, betas=betas, eps=eps, foreach=True)
    if kind != "adamw":
        raise ConfigError(f"unknown optimizer {kind!r}; choose one of: {', '.join(OPTIMIZERS)}")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate (the schedule is ``training.progress.LRSchedule``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
