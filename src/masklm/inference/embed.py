"""Sentence embeddings from the encoder's last hidden states.

Pooling (``models.heads.pool``, shared with fine-tuned sequence heads):
- ``mean``: the average over all non-padding positions, [CLS] and [SEP] included, exactly as
  sentence-transformers' mean pooling does (it averages under the attention mask). Keeping the
  special tokens makes our vectors comparable with that convention.
- ``cls``: the hidden state at position 0 ([CLS]).

``normalize=True`` scales each vector to unit L2 norm, so a dot product is the cosine similarity.
The result is a float32 ``numpy.ndarray`` ``[N, D]`` on the CPU (what vector stores and
``np.save`` take), whatever device the model runs on.

Texts are sorted by length and cut into batches of at most ``batch_tokens`` tokens (rows x width),
so padding is small; results come back in input order (``masklm.inference.batching``). An empty text is
allowed (it embeds ``[CLS] [SEP]``); a text over the model's maximum length is an InputError, never
truncated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from masklm.errors import InputError
from masklm.inference.batching import (
    encode,
    longest_first,
    mask_or_none,
    pad,
    resolve_batch_tokens,
    token_batches,
)
from masklm.models.heads import POOLINGS, pool


@torch.inference_mode()
def embed_texts(
    model: torch.nn.Module,
    tokenizer,
    texts: str | Sequence[str],
    pooling: str = "mean",
    normalize: bool = True,
    batch_tokens: int | None = None,
    max_length: int | None = None,
) -> np.ndarray:
    """Embed ``texts`` -> float32 ``[N, D]`` (``[D]`` for a single string).

    ``batch_tokens`` None means ``batching.DEFAULT_BATCH_TOKENS`` for the model's device (4096 on CPU,
    65536 on GPU).
    """
    device = next(model.parameters()).device
    batch_tokens = resolve_batch_tokens(batch_tokens, device)
    if pooling not in POOLINGS:
        raise InputError(f"unknown pooling {pooling!r}; use mean or cls")
    single = isinstance(texts, str)
    items = [texts] if single else list(texts)
    if not items:
        raise InputError("no texts given; pass a text or a list of them")
    rows = [e.ids for e in encode(tokenizer, items, max_length or model.config.max_position_embeddings, "text")]
    out = np.empty((len(rows), model.config.hidden_size), dtype=np.float32)
    order = longest_first([len(row) for row in rows])
    for lo, hi in token_batches([len(rows[i]) for i in order], batch_tokens):
        chunk = order[lo:hi]
        input_ids, mask = (t.to(device) for t in pad([rows[i] for i in chunk], tokenizer.pad_id))  # [B, T]
        keep = mask.bool()
        hidden = model.encode(input_ids, attention_mask=mask_or_none(mask)).float()        # [B, T, D]
        pooled = pool(hidden, keep, pooling)                                                 # [B, D]
        if normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        out[chunk] = pooled.cpu().numpy()
    return out[0] if single else out
