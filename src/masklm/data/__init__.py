"""Data pipeline: corpus -> shards (memmap) -> packed rows -> masked batches.

Names are imported lazily so that reading a corpus does not pay for importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BUILTIN_CORPORA": "corpus", "CorpusStats": "corpus", "iter_documents": "corpus",
    "list_builtin": "corpus", "ShardedCorpus": "shards", "prepare_shards": "shards",
    "PackedRows": "packing", "split_documents": "packing", "mask_tokens": "masking",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'masklm.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"masklm.data.{_EXPORTS[name]}"), name)
