"""Optimizers (AdamW, LAMB), parameter groups and learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from masklm.errors import ConfigError

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
        from masklm.training.lamb import Lamb

        return Lamb(groups, lr=lr, betas=betas, eps=eps, foreach=True)
    if kind != "adamw":
        raise ConfigError(f"unknown optimizer {kind!r}; choose one of: {', '.join(OPTIMIZERS)}")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)


class LRSchedule:
    """Linear warmup, then cosine, linear or constant decay down to ``min_ratio`` of the peak, then
    an optional linear cooldown to 0 over the last ``cooldown`` of the run (GPT-BERT's recipe).

    ``cooldown`` is a fraction (< 1) of ``total_steps`` or a number of steps; as a fraction it is
    re-read from ``total_steps`` at every call. ``total_steps`` may be changed while training (a
    time-limited run learns its length after a few steps); the multiplier is a pure function of
    (step, total), so resuming reproduces it exactly. The decay ends where the cooldown begins, so
    the curve is continuous (the reference's cosine runs to the very end and is cut by the cooldown,
    a jump of < 0.001x the peak there).
    """

    def __init__(self, kind: str, total_steps: int, warmup_steps: int, min_ratio: float = 0.0,
                 cooldown: int | float = 0) -> None:
        self.kind = kind
        self.total_steps = max(1, total_steps)
        self.warmup_steps = max(0, warmup_steps)
        self.min_ratio = min_ratio
        self.cooldown = cooldown
        self.warmup_spec: int | float = self.warmup_steps  # what resize() scales; a fraction, if given

    def resize(self, total_steps: int) -> None:
        """Change the run's length (a time-limited run); the warmup never grows past its spec's length."""
        self.total_steps = max(1, total_steps)
        self.warmup_steps = min(self.warmup_steps, warmup_steps_for(self.warmup_spec, self.total_steps))

    @property
    def cooldown_steps(self) -> int:
        return min(warmup_steps_for(self.cooldown, self.total_steps), self.total_steps - self.warmup_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        cooldown = max(0, self.cooldown_steps)
        floor = 1.0 if self.kind == "constant" else self.min_ratio
        decay_end = self.total_steps - cooldown
        if cooldown and step >= decay_end:
            # From the decay's floor down to 0 at total_steps; the last step (total - 1) stays above 0.
            return floor * (self.total_steps - min(step, self.total_steps)) / cooldown
        if self.kind == "constant":
            return 1.0
        span = max(1, decay_end - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        if self.kind == "linear":
            decay = 1.0 - progress
        else:
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_ratio + (1.0 - self.min_ratio) * decay


def warmup_steps_for(warmup: int | float, total_steps: int) -> int:
    """A warmup given as a fraction (< 1) of the run, or as a number of steps."""
    if isinstance(warmup, float) and warmup < 1.0:
        return int(round(warmup * total_steps))
    return int(warmup)


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, schedule: Callable[[int], float], step: int) -> float:
    lr = base_lr * schedule(step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
