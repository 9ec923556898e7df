"""LAMB, as LTG-BERT and GPT-BERT train with it (research/ltg_bert.md §5.3, §5.4, §8 item 10).

Per parameter w with gradient g, at step t:

    m = b1 m + (1 - b1) g            v = b2 v + (1 - b2) g^2
    u = m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps)
    if weight_decay > 0:  u += wd * w;  r = |w| / |u|  (r = 1 when either norm is 0)
    else:                 r = 1
    w -= lr * r * u

The trust ratio is applied **only** in groups with weight decay > 0, like the reference: no-decay
groups (biases, norms and, LTG-BERT style, embeddings) take a plain Adam step at the full LR, which
at LTG-BERT's lr 1e-2 is a large step; that is the recipe, not a bug.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

Tensors = list[torch.Tensor]


class Lamb(torch.optim.Optimizer):
    """Layer-wise adaptive moments (You et al. 2019) in the LTG-BERT variant; see the module docstring.

    ``foreach`` (default True) updates each group's tensors with the multi-tensor ``torch._foreach_*``
    kernels, one launch per operation instead of one per parameter; False loops over parameters.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, foreach: bool | None = None) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr}")
        if eps < 0.0:
            raise ValueError(f"invalid eps {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}")
        if weight_decay < 0.0:
            raise ValueError(f"invalid weight_decay {weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        foreach=True if foreach is None else foreach)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # Bucket by (device, dtype): the multi-tensor kernels and the stacked norms need one of each.
            buckets: dict[tuple[torch.device, torch.dtype], tuple[Tensors, Tensors, Tensors, Tensors, list[int]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients")
                state = self.state[p]
                if not state:
                    # A plain int step: bias corrections are computed on the host, with no device sync.
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] = int(state["step"]) + 1
                bucket = buckets.setdefault((p.device, p.dtype), ([], [], [], [], []))
                for i, item in enumerate((p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])):
                    bucket[i].append(item)
            update = _foreach_update if group["foreach"] else _single_update
            for params, grads, exp_avgs, exp_avg_sqs, steps in buckets.values():
                update(params, grads, exp_avgs, exp_avg_sqs, steps, lr=group["lr"], betas=group["betas"],
                       eps=group["eps"], weight_decay=group["weight_decay"])
        return loss


def _foreach_update(params: Tensors, grads: Tensors, exp_avgs: Tensors, exp_avg_sqs: Tensors,
                    steps: list[int], *, lr: float, betas: tuple[float, float], eps: float,
                    weight_decay: float) -> None:
    """One LAMB step over tensors of one device and dtype, with multi-tensor kernels."""
    beta1, beta2 = betas
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)

    # Steps can differ between tensors (a parameter without a gradient skips a step), hence lists.
    denom = torch._foreach_div(exp_avg_sqs, [1.0 - beta2**s for s in steps])
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, eps)
    updates = torch._foreach_div(exp_avgs, [1.0 - beta1**s for s in steps])
    torch._foreach_div_(updates, denom)

    if weight_decay > 0.0:
        torch._foreach_add_(updates, params, alpha=weight_decay)
        w_norm = torch.stack(torch._foreach_norm(params)).float()
        u_norm = torch.stack(torch._foreach_norm(updates)).float()
        ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
        # Per-tensor step sizes stay on the device: no .item(), so no host sync per parameter.
        torch._foreach_mul_(updates, list((ratio * -lr).to(params[0].dtype).unbind()))
        torch._foreach_add_(params, updates)
    else:
        torch._foreach_add_(params, updates, alpha=-lr)


def _single_update(params: Tensors, grads: Tensors, exp_avgs: Tensors, exp_avg_sqs: Tensors,
                   steps: list[int], *, lr: float, betas: tuple[float, float], eps: float,
                   weight_decay: float) -> None:
    """The same step, one tensor at a time (for debugging and for tensors foreach cannot take)."""
    beta1, beta2 = betas
    for p, g, m, v, s in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        m.mul_(beta1).add_(g, alpha=1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        update = (m / (1.0 - beta1**s)) / ((v / (1.0 - beta2**s)).sqrt_().add_(eps))
        if weight_decay > 0.0:
            update.add_(p, alpha=weight_decay)
            w_norm, u_norm = p.norm().float(), update.norm().float()
            ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
            p.add_(update * (ratio * -lr).to(p.dtype))
        else:
            p.add_(update, alpha=-lr)
