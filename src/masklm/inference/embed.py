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
so padding is small; results come back in input order. An empty text is allowed (it embeds
``[CLS] [SEP]``); a text over the model's maximum length is an InputError, never truncated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from masklm.errors import InputError
from masklm.models.heads import POOLINGS, pool
from masklm.scoring.pll import default_batch_tokens


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

    ``batch_tokens`` None means the scorer's default for the model's device (4096 on CPU, 65536 on GPU).
    """
    device = next(model.parameters()).device
    batch_tokens = default_batch_tokens(device) if batch_tokens is None else batch_tokens
    if pooling not in POOLINGS:
        raise InputError(f"unknown pooling {pooling!r}; use mean or cls")
    if batch_tokens < 1:
        raise InputError(f"batch_tokens must be >= 1, got {batch_tokens}")
    single = isinstance(texts, str)
    items = [texts] if single else list(texts)
    if not items:
        raise InputError("no texts given; pass a text or a list of them")
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise InputError(f"text {i} is {type(t).__name__}, not a string; pass text")
    max_length = max_length or model.config.max_position_embeddings
    rows = [e.ids for e in tokenizer.encode_batch(items)]
    for i, row in enumerate(rows):
        if len(row) > max_length:
            raise InputError(
                f"text {i} is {len(row)} tokens long, more than the model's maximum of {max_length}; "
                "split or shorten it (nothing is truncated)"
            )
    out = np.empty((len(rows), model.config.hidden_size), dtype=np.float32)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    lo = 0
    while lo < len(order):
        width = len(rows[order[lo]])
        chunk = order[lo:lo + max(1, batch_tokens // width)]
        lo += len(chunk)
        input_ids = torch.full((len(chunk), width), tokenizer.pad_id, dtype=torch.long)
        keep = torch.zeros((len(chunk), width), dtype=torch.bool)
        for b, i in enumerate(chunk):
            input_ids[b, :len(rows[i])] = torch.tensor(rows[i])
            keep[b, :len(rows[i])] = True
        keep = keep.to(device)
        attention_mask = None if bool(keep.all()) else keep.long()
        hidden = model.encode(input_ids.to(device), attention_mask=attention_mask).float()  # [B, T, D]
        pooled = pool(hidden, keep, pooling)                                                 # [B, D]
        if normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        out[chunk] = pooled.cpu().numpy()
    return out[0] if single else out
