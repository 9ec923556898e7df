"""Commit-style confidence decoding: MaskGIT (Chang et al., 2022) and LLaDA (Nie et al., 2025).

Each step predicts every still-masked position of the current block, then *commits* the k most
confident predictions (or the k with the largest top-1 minus top-2 probability margin); everything
else stays [MASK]. A committed token never changes and the number of masks never grows.

How many to commit (per row, N = the block's generated positions, r = (i + 1) / steps_per_block):
- ``cosine`` (MaskGIT): after step i, max(1, min(#masked - 1, floor(N cos(pi r / 2)))) stay masked;
  none after the last step.
- ``linear`` (LLaDA): k_i = N // S + (1 if i < N % S), the remainder going to the earliest steps.

Tokens are the argmax at temperature 0, else float64 samples (``sampling.draw``). ``choice_temperature`` adds
MaskGIT's annealed Gumbel noise to the ranking: confidence = log p + tau (1 - r) g.

Semi-autoregressive blocks (``block_length``): the generated positions of a row, in order, are cut into
blocks decoded left to right with ``steps / n_blocks`` steps each; predictions are made with the later
blocks still masked. With block_length = 1 and steps = length this is greedy left-to-right decoding.
"""

from __future__ import annotations

import math

import torch

from masklm.generation.canvas import Canvas
from masklm.generation.sampling import Network, choose, cosine_ratio, gumbel, ranks, widen

SCHEDULES = ("cosine", "linear")
COMMITS = ("confidence", "margin")


def still_masked(n: torch.Tensor, masked: torch.Tensor, i: int, steps: int, schedule: str) -> torch.Tensor:
    """How many of a block's positions stay masked after step i (0-based) of ``steps``.

    n ``[B]`` positions in the block, masked ``[B]`` masked now -> ``[B]``.
    """
    if i == steps - 1:
        return torch.zeros_like(n)
    if schedule == "cosine":
        target = torch.floor(n.double() * cosine_ratio((i + 1) / steps)).long()
        return torch.minimum(masked, torch.maximum(torch.ones_like(n), torch.minimum(masked - 1, target)))
    q, r = torch.div(n, steps, rounding_mode="floor"), n % steps
    done = q * (i + 1) + torch.clamp(r, max=i + 1)  # sum of k_0..k_i
    return (n - done).clamp_min(0)


@torch.no_grad()
def confidence_decode(net: Network, canvas: Canvas, mask_id: int, steps: int, schedule: str = "cosine",
                      commit: str = "confidence", block_length: int | None = None, temperature: float = 0.0,
                      top_k: int | None = None, top_p: float | None = None, choice_temperature: float = 0.0,
                      generator: torch.Generator | None = None) -> None:
    """Decode ``canvas`` in place; ``steps`` must be a multiple of the number of blocks."""
    lo = canvas.lo
    x = canvas.ids[:, lo:]  # [B, G] view
    gen = canvas.gen[:, lo:]
    x[gen] = mask_id
    attention = canvas.padding_mask()
    ordinal = gen.long().cumsum(1) - 1  # [B, G]: index of each generated position within its row
    n_max = int(gen.sum(1).max())
    block = block_length or n_max
    n_blocks = math.ceil(n_max / block)
    per_block = steps // n_blocks
    for b in range(n_blocks):
        in_block = gen & (ordinal >= b * block) & (ordinal < (b + 1) * block)  # [B, G]
        n = in_block.sum(1)  # [B]
        for i in range(per_block):
            masked = in_block & (x == mask_id)
            if not masked.any():
                break
            all_logits = net.logits(canvas.ids, attention, lo)  # [B, G, V]
            logits = all_logits[masked]  # [M, V]
            ids, logp = choose(logits, temperature, top_k, top_p, generator)
            if commit == "margin":
                top2 = logits.softmax(-1).topk(2, dim=-1).values  # [M, 2]
                score = (top2[:, 0] - top2[:, 1]).double()
            else:
                score = logp.double()
            if choice_temperature > 0:
                r = (i + 1) / per_block
                score = score + choice_temperature * (1 - r) * gumbel((score.shape[0],), generator, score.device)
            conf = torch.full(x.shape, float("-inf"), dtype=torch.float64, device=x.device)
            conf[masked] = score
            proposal = torch.full_like(x, mask_id)
            proposal[masked] = ids
            k = masked.sum(1) - still_masked(n, masked.sum(1), i, per_block, schedule)  # [B] to commit now
            take = masked & (ranks(conf, descending=True) < k[:, None])
            net.write(canvas.ids, widen(take, lo), proposal[take], all_logits[take],
                      lambda lg: choose(lg, temperature, top_k, top_p, generator))
