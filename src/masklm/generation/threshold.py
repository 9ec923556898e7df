"""Threshold commits in semi-autoregressive blocks with a cache of the committed prefix (Fast-dLLM style).

Fast-dLLM (Wu et al., 2025, NVlabs/Fast-dLLM) decodes a diffusion LM block by block and, within a block,
commits in one step every masked position whose confidence (the model's probability of the token it
chose) reaches a threshold, and at least the most confident one, instead of a fixed number per step;
LLaDA (Nie et al., 2025) introduced the semi-autoregressive blocks. Easy stretches then take one call
for many tokens and hard ones fall back to one token per call.

The cache. The canvas columns are cut into chunks of ``block_length`` read positions (the position that
predicts target column c is c - shift, shift from ``TrainedAs.mask_shift``; chunk j = the reads of the
targets ``1 + j*L .. (j+1)*L``, so the prompt is cut the same way; [CLS] joins chunk 0). Attention is
block-causal: a chunk
sees every earlier chunk and itself, bidirectionally, never a later one (the structure of block
diffusion, Arriola et al. 2025, and Fast-dLLM v2). The keys and values of the committed prefix therefore
never change: each block's first step feeds the chunks committed since the last block together with the
block, and keeps their keys and values; every later step of the block feeds the block alone over the
cached prefix (``kv_cache.WindowCache``). ``cache=False`` recomputes the whole visible canvas with the
same block-causal mask at every step; it gives the same tokens (the cache is exact, only rounding
differs) and exists to test that. Later blocks are not fed at all, so a step never pays for the
still-masked tail. With one block over the whole canvas every step is a plain bidirectional pass over
the visible canvas (all columns but the last with shift 1: no position reads it).

With block_length 1 every chunk is one position: attention is causal, and with shift 1 (GPT-BERT's
``mntp`` + ``clm``) the read row holds only committed tokens, so a threshold of 1 (one token per step)
is greedy left-to-right decoding with the causal LM, token for token.
"""

from __future__ import annotations

import math

import torch

from masklm.generation.canvas import Canvas
from masklm.generation.kv_cache import WindowCache
from masklm.generation.sampling import Network, choose


def chunk_limits(start: int, stop: int, shift: int, block: int, end: int) -> torch.Tensor:
    """For read rows ``start..stop-1``: the first column each may not see (its chunk's end, at most
    ``end``) -> long ``[stop - start]``."""
    rows = torch.arange(start, stop)
    chunk = torch.div(rows + shift - 1, block, rounding_mode="floor").clamp_min(0)  # [CLS] joins chunk 0
    return ((chunk + 1) * block + 1 - shift).clamp(max=end)


def commit_mask(conf: torch.Tensor, masked: torch.Tensor, threshold: float) -> torch.Tensor:
    """Positions to commit: every masked one with confidence >= threshold, and in each row that has a
    masked position but none above the threshold, its most confident. conf, masked ``[B, L]`` -> bool."""
    conf = conf.masked_fill(~masked, -1.0)
    take = masked & (conf >= threshold)
    best = torch.zeros_like(masked).scatter_(1, conf.argmax(1, keepdim=True), True) & masked
    return take | (best & ~take.any(1, keepdim=True))


@torch.no_grad()
def threshold_decode(net: Network, canvas: Canvas, mask_id: int, threshold: float = 0.9, block_length: int = 8,
                     temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                     generator: torch.Generator | None = None, cache: bool = True) -> None:
    """Decode ``canvas`` in place, block by block (module docstring)."""
    x, gen = canvas.ids, canvas.gen  # [B, W]
    W, s, L = x.shape[1], net.shift, block_length
    if canvas.lo < max(s, 1):
        raise ValueError("the first generated column must leave room for the shifted read")
    x[gen] = mask_id
    store = WindowCache(net.model, canvas.attention.bool()) if cache else None
    fed = 0  # columns whose keys and values the cache holds (always a chunk boundary)
    for k in range(math.ceil((W - 1) / L)):
        t0, t1 = 1 + k * L, min(1 + (k + 1) * L, W)  # target columns of block k
        if not bool(gen[:, t0:t1].any()):
            continue
        a, b = t0 - s, t1 - s  # its read rows
        while True:
            masked = gen[:, t0:t1] & (x[:, t0:t1] == mask_id)  # [B, L]
            if not masked.any():
                break
            work = store if store is not None else WindowCache(net.model, canvas.attention.bool())
            start = fed if store is not None else 0
            net.record(x)  # the whole canvas before the call (the trace shows states, not windows)
            hidden = work.feed(x[:, start:b], chunk_limits(start, b, s, L, b))  # [B, b - start, D]
            if store is not None:  # keep the committed chunks, drop the block's chunk: it changes
                fed = a if k > 0 else 0  # chunk 0 starts at column 0 ([CLS], and the prompt with shift 1)
                store.truncate(fed)
            logits = net.adjust(net.ban(net.model.predict(hidden[:, a - start:]).float()), x)  # [B, L, V]
            ids, logp = choose(logits[masked], temperature, top_k, top_p, generator)
            conf = torch.zeros(masked.shape, dtype=torch.float64, device=x.device)
            conf[masked] = logp.double().exp()
            proposal = torch.full_like(masked, mask_id, dtype=x.dtype)
            proposal[masked] = ids
            take = commit_mask(conf, masked, threshold)
            where = torch.zeros_like(gen)
            where[:, t0:t1] = take
            net.write(x, where, proposal[take], logits[take],
                      lambda lg: choose(lg, temperature, top_k, top_p, generator))
