"""Left-to-right decoding with causal attention: the baseline every parallel strategy is measured against.

For weights trained with ``clm`` (alone, in an AntLM schedule, or as GPT-BERT's partner of ``mntp``) the
output at position i predicts token i + 1, so column p is filled from the logits at p - 1. Positions that
are not generated (the prompt, a template's words) are fed as they are. With ``cache=True`` each step
feeds one token through the key/value cache (``kv_cache.CausalStepper``); with ``cache=False`` it reruns
the whole prefix, which is what the cache must reproduce.
"""

from __future__ import annotations

import torch

from masklm.generation.canvas import Canvas
from masklm.generation.kv_cache import CausalStepper, supports_cache
from masklm.generation.sampling import Network


@torch.no_grad()
def autoregressive(net: Network, canvas: Canvas, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None, generator: torch.Generator | None = None, cache: bool = True,
                   stop_id: int | None = None) -> None:
    """Decode ``canvas`` in place, column ``canvas.lo`` to the last; stop early once every row has
    generated ``stop_id`` (or has nothing left to generate)."""
    x, gen = canvas.ids, canvas.gen  # [B, W]
    B, W = x.shape
    lo = canvas.lo
    stepper = None
    if cache and supports_cache(net.model):
        stepper = CausalStepper(net.model, B, W)
        net.record(x[:, :lo])
        last = stepper.step(x[:, :lo])[:, -1]  # [B, D]: the state that predicts column lo
    stopped = torch.zeros(B, dtype=torch.bool, device=x.device)
    remaining = gen.flip(1).cumsum(1).flip(1)  # [B, W]: generated positions at or after each column
    for p in range(lo, W):
        if stepper is not None:
            logits = net.adjust(net.ban(net.model.predict(last).float()), x)  # [B, V]
        else:
            logits = net.causal_logits(x[:, :p])
        need = gen[:, p] & ~stopped
        if need.any():
            where = torch.zeros_like(gen)
            where[:, p] = need
            net.choose_and_write(x, where, logits[need], temperature, top_k, top_p, generator)
        if stop_id is not None:
            stopped |= need & (x[:, p] == stop_id)
        finished = stopped | (remaining[:, p + 1] == 0 if p + 1 < W else torch.ones_like(stopped))
        if bool(finished.all()):
            break
        if stepper is not None:
            net.record(x[:, p:p + 1])
            last = stepper.step(x[:, p:p + 1])[:, -1]
