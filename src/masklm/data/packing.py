"""Held-out splits by document, and packing documents into fixed-length rows.

Packing lays the selected documents end to end in one virtual stream and cuts it every ``seq_len``
tokens. A long document continues in the next row, several short ones share a row, and only the
very last row is padded, so no text is dropped and almost no compute goes to padding. Each row
carries per-token document ids so attention can be made block-diagonal, and each batch says whether
every row holds one document (then attention needs no document mask at all: ``models.attention``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from masklm.data.shards import ShardedCorpus
from masklm.errors import ConfigError


def split_documents(num_documents: int, heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Carve a held-out set by document -> (train_doc_idx, heldout_doc_idx), each int64 and sorted.

    Deterministic for a given seed. With ``heldout_fraction > 0`` and at least two documents, at
    least one document is held out and at least one stays for training.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ConfigError(f"heldout fraction must be in [0, 1) (got {heldout_fraction})")
    if num_documents < 0:
        raise ConfigError(f"num_documents must be >= 0 (got {num_documents})")
    n_heldout = 0
    if heldout_fraction > 0 and num_documents >= 2:
        n_heldout = min(max(1, round(heldout_fraction * num_documents)), num_documents - 1)
    order = np.random.default_rng(seed).permutation(num_documents)
    return np.sort(order[n_heldout:]).astype(np.int64), np.sort(order[:n_heldout]).astype(np.int64)


class PackedRows:
    """Fixed-length rows over the documents ``doc_indices`` of a ShardedCorpus, in that order.

    Memory is O(len(doc_indices)): only cumulative lengths are kept; tokens stay in the memmap.
    Row ``r`` covers positions ``[r * seq_len, (r + 1) * seq_len)`` of the virtual stream.
    """

    def __init__(self, corpus: ShardedCorpus, doc_indices: Sequence[int] | np.ndarray, seq_len: int,
                 pad_id: int) -> None:
        if seq_len < 1:
            raise ConfigError(f"seq_len must be >= 1 (got {seq_len})")
        self.corpus = corpus
        self.doc_indices = np.asarray(doc_indices, dtype=np.int64)
        if len(self.doc_indices) and (self.doc_indices.min() < 0 or self.doc_indices.max() >= corpus.num_documents):
            raise ConfigError(f"document index out of range (corpus has {corpus.num_documents} documents)")
        self.seq_len = int(seq_len)
        self.pad_id = int(pad_id)
        lengths = corpus.doc_lengths[self.doc_indices]
        self.cum_lengths = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # [D+1]
        self._doc_starts = corpus.doc_offsets[self.doc_indices]  # [D] global offset of each document
        self.num_tokens = int(self.cum_lengths[-1])

    def __len__(self) -> int:
        return -(-self.num_tokens // self.seq_len)

    def batch(self, rows: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """Rows -> tensors, all ``[B, T]`` with ``T = seq_len``:

        ``input_ids`` long (pad_id at pads), ``attention_mask`` long (1 token, 0 pad),
        ``document_ids`` long (0, 1, 2, ... per document segment within the row; -1 at pads),
        ``word_starts`` bool, ``num_tokens`` (0-dim long): the number of non-pad tokens, and
        ``single_document`` (0-dim bool): every row holds (part of) one document only, so attention needs
        no document mask; known here from the arrays, it spares the model a device sync to find out.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row out of range (have {len(self)} rows)")
        positions = rows[:, None] * self.seq_len + np.arange(self.seq_len, dtype=np.int64)  # [B, T]
        valid = positions < self.num_tokens
        positions = np.minimum(positions, max(self.num_tokens - 1, 0))
        seg = np.searchsorted(self.cum_lengths, positions, side="right") - 1  # [B, T] index into doc_indices
        ids, starts = self.corpus.gather(self._doc_starts[seg] + positions - self.cum_lengths[seg])
        ids[~valid] = self.pad_id
        starts &= valid
        document_ids = np.where(valid, seg - seg[:, :1], -1)
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(valid.astype(np.int64)),
            "document_ids": torch.from_numpy(document_ids),
            "word_starts": torch.from_numpy(starts),
            "num_tokens": torch.tensor(int(valid.sum()), dtype=torch.long),
            "single_document": torch.tensor(bool((document_ids <= 0).all())),
        }
