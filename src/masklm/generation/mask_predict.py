"""Mask-Predict (Ghazvininejad et al., 2019; facebookresearch/Mask-Predict ``mask_predict.py``).

Start with every generated position masked and predict them all (iteration 0). At iteration
t = 1..T-1 re-mask the n_t = max(1, floor(N (T - t) / T)) positions of lowest confidence, *any* generated
position (an earlier choice can be revised), and predict only those again; a position that is not
re-masked keeps its token and the confidence it had when it was last predicted. N is the row's number
of generated positions. T = 1 is one-shot non-autoregressive decoding: exactly one network call.

Length beam (``length_beam`` = l > 1): the caller builds l rows per prompt with lengths centred on the
requested one; they decode in one batch, and the row with the best mean log-probability wins.
"""

from __future__ import annotations

import torch

from masklm.generation.canvas import Canvas
from masklm.generation.sampling import Network, ranks, widen


def remask_count(n: torch.Tensor, t: int, steps: int) -> torch.Tensor:
    """Positions to re-mask at iteration t (1..T-1) for rows with n ``[B]`` generated positions -> ``[B]``.

    floor(n (T - t) / T), at least 1 where n > 0 (Mask-Predict's ``select_worst`` takes max(1, .)).
    """
    count = torch.div(n * (steps - t), steps, rounding_mode="floor")
    return torch.where(n > 0, count.clamp_min(1), torch.zeros_like(count))


@torch.no_grad()
def mask_predict(net: Network, canvas: Canvas, mask_id: int, steps: int, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Decode ``canvas`` in place with T = ``steps`` iterations -> mean log-probability per row ``[B]``.

    At temperature 0 tokens are the argmax (the paper's algorithm); above it they are sampled, and
    the confidence is the model's probability of the sampled token.
    """
    lo = canvas.lo
    x = canvas.ids[:, lo:]  # [B, G] view: writes land in canvas.ids
    gen = canvas.gen[:, lo:]  # [B, G]
    n = gen.sum(1)  # [B]
    attention = canvas.padding_mask()
    x[gen] = mask_id
    logp = torch.zeros(x.shape, dtype=torch.float32, device=x.device)  # [B, G], confidence of each token
    where = gen
    for t in range(steps):
        if t > 0:
            # re-mask the n_t least confident generated positions of each row (rank 0 = least confident)
            scores = logp.masked_fill(~gen, float("inf"))
            where = gen & (ranks(scores, descending=False) < remask_count(n, t, steps)[:, None])
            x[where] = mask_id
        logits = net.logits(canvas.ids, attention, lo)  # [B, G, V]
        _, lp = net.choose_and_write(canvas.ids, widen(where, lo), logits[where], temperature, top_k, top_p,
                                     generator)
        logp[where] = lp
    return (logp * gen).sum(1) / n.clamp_min(1)
