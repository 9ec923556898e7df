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
truncated, unless ``windows`` is given: then it is read as overlapping windows ``[CLS] piece [SEP]``
(``batching.window_rows``; the stride is the overlap), each window pooled as above, and the windows'
vectors combined by their elementwise mean or max (``WindowSpec.pool``) before the normalisation. A text
that fits is one window, the same vector as without windows. ``windows_used``, when a list, gets the
number of windows of each text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from masklm.errors import InputError
from masklm.inference.batching import (
    WINDOWS_FIX,
    WindowSpec,
    as_windows,
    check_strings,
    encode,
    longest_first,
    mask_or_none,
    max_input_length,
    pad,
    pool_windows,
    resolve_batch_tokens,
    token_batches,
    window_rows,
)
from masklm.models.heads import POOLINGS, pool


def _rows(tokenizer, items: list[str], max_length: int, spec: WindowSpec | None
          ) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Id rows (one per window) and each text's rows ``[lo, hi)``."""
    if spec is None:
        rows = [e.ids for e in encode(tokenizer, items, max_length, "text", fix=WINDOWS_FIX)]
        return rows, [(i, i + 1) for i in range(len(rows))]
    rows: list[list[int]] = []
    groups = []
    for i, enc in enumerate(tokenizer.encode_batch(items, add_special_tokens=False)):
        more, _ = window_rows(enc.ids, [tokenizer.cls_id], [tokenizer.sep_id], max_length, spec, f"text {i}")
        groups.append((len(rows), len(rows) + len(more)))
        rows.extend(more)
    return rows, groups


@torch.inference_mode()
def embed_texts(
    model: torch.nn.Module,
    tokenizer,
    texts: str | Sequence[str],
    pooling: str = "mean",
    normalize: bool = True,
    batch_tokens: int | None = None,
    max_length: int | None = None,
    windows: WindowSpec | dict | bool | None = None,
    windows_used: list[int] | None = None,
) -> np.ndarray:
    """Embed ``texts`` -> float32 ``[N, D]`` (``[D]`` for a single string).

    ``batch_tokens`` None means ``batching.DEFAULT_BATCH_TOKENS`` for the model's device (4096 on CPU,
    65536 on GPU).
    """
    device = next(model.parameters()).device
    batch_tokens = resolve_batch_tokens(batch_tokens, device)
    if pooling not in POOLINGS:
        raise InputError(f"unknown pooling {pooling!r}; use mean or cls")
    spec = as_windows(windows)
    single = isinstance(texts, str)
    items = [texts] if single else list(texts)
    if not items:
        raise InputError("no texts given; pass a text or a list of them")
    if spec is not None:
        check_strings(items, "text")
    rows, groups = _rows(tokenizer, items, max_length or max_input_length(model.config, tokenizer), spec)
    vectors = torch.empty((len(rows), model.config.hidden_size), dtype=torch.float32)
    order = longest_first([len(row) for row in rows])
    for lo, hi in token_batches([len(rows[i]) for i in order], batch_tokens):
        chunk = order[lo:hi]
        input_ids, mask = (t.to(device) for t in pad([rows[i] for i in chunk], tokenizer.pad_id))  # [B, T]
        keep = mask.bool()
        hidden = model.encode(input_ids, attention_mask=mask_or_none(mask)).float()        # [B, T, D]
        vectors[chunk] = pool(hidden, keep, pooling).cpu()                                   # [B, D]
    how = spec.pool if spec is not None else "mean"
    pooled = torch.stack([pool_windows(vectors[lo:hi], how) for lo, hi in groups])          # [N, D]
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
    if windows_used is not None:
        windows_used.extend(hi - lo for lo, hi in groups)
    out = pooled.numpy()
    return out[0] if single else out
