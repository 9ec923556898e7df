"""MDLM's ancestral sampler with the cache (Sahoo et al., 2024; kuleshov-group/mdlm ``_ddpm_caching_update``).

Times run t_0 = 1 > t_1 > ... > t_S = eps (``linspace``). On a step from t to s, each still-masked
position stays masked with probability s / t (alpha_t = 1 - t) and otherwise takes a token drawn from the
model's prediction p_0(x | canvas) ("carry-over": a position once unmasked never changes). The model has
no time input, so p_0 depends only on the canvas: when a step unmasks nothing, the next step reuses the
same logits and makes no network call; the number of calls equals the number of distinct canvases
visited. Whatever is still masked after the last step gets the argmax ("noise removal").
"""

from __future__ import annotations

import torch

from masklm.generation.canvas import Canvas
from masklm.generation.sampling import Network, widen


def unmask_draw(masked: torch.Tensor, t: float, s: float, generator: torch.Generator | None) -> torch.Tensor:
    """Which masked positions unmask on the step t -> s: masked ``[B, G]`` bool -> ``[B, G]`` bool.

    Each masked position stays masked with probability s / t, independently.
    """
    u = torch.rand(masked.shape, generator=generator, dtype=torch.float64, device=masked.device)
    return masked & (u >= s / t)


@torch.no_grad()
def diffusion_sample(net: Network, canvas: Canvas, mask_id: int, steps: int, eps: float = 1e-5,
                     temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                     generator: torch.Generator | None = None, cache: bool = True) -> None:
    """Decode ``canvas`` in place with ``steps`` ancestral steps from t = 1 to t = eps.

    ``cache=False`` calls the network on every step (same samples for the same seed, more calls).
    """
    lo = canvas.lo
    x = canvas.ids[:, lo:]  # [B, G] view
    gen = canvas.gen[:, lo:]
    x[gen] = mask_id
    attention = canvas.padding_mask()
    times = torch.linspace(1.0, eps, steps + 1, dtype=torch.float64).tolist()
    logits = None  # [B, G, V], valid for the current canvas
    for i in range(steps):
        masked = gen & (x == mask_id)
        if not masked.any():
            break
        if logits is None or not cache:  # the cache: logits stay valid until the canvas changes
            logits = net.logits(canvas.ids, attention, lo)
        unmask = unmask_draw(masked, times[i], times[i + 1], generator)
        if not unmask.any():
            continue
        net.choose_and_write(canvas.ids, widen(unmask, lo), logits[unmask], temperature, top_k, top_p, generator)
        logits = None
    masked = gen & (x == mask_id)
    if masked.any():  # noise removal at t = eps
        if logits is None:
            logits = net.logits(canvas.ids, attention, lo)
        net.choose_and_write(canvas.ids, widen(masked, lo), logits[masked])  # argmax
