"""Packing: document-level splits, rows that drop no text, document ids, batch independence, memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from masklm.data.packing import PackedRows, split_documents
from masklm.data.shards import ShardedCorpus, prepare_shards
from masklm.errors import ConfigError

PAD = 0


@pytest.fixture(scope="module", params=[1 << 28, 150], ids=["one-shard", "many-shards"])
def corpus(request, tmp_path_factory, documents, wordpiece_tokenizer):
    out = tmp_path_factory.mktemp("packing") / "shards"
    path = out.parent / "c.txt"
    path.write_text("\n\n".join(documents))
    prepare_shards([str(path)], wordpiece_tokenizer, out, num_workers=1, log=lambda m: None,
                   shard_tokens=request.param)
    return ShardedCorpus(out)


def test_split_documents_is_deterministic_and_by_document():
    train, heldout = split_documents(100, 0.1, seed=3)
    assert len(heldout) == 10 and len(train) == 90
    assert sorted(np.concatenate([train, heldout]).tolist()) == list(range(100))
    again = split_documents(100, 0.1, seed=3)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], heldout)
    assert not np.array_equal(split_documents(100, 0.1, seed=4)[1], heldout)
    assert train.dtype == np.int64 and np.all(np.diff(train) > 0)


@pytest.mark.parametrize("n, fraction, expected", [(10, 0.01, 1), (2, 0.9, 1), (3, 0.99, 2), (1, 0.5, 0), (50, 0.0, 0)])
def test_split_documents_bounds(n, fraction, expected):
    train, heldout = split_documents(n, fraction, seed=0)
    assert len(heldout) == expected and len(train) == n - expected


def test_split_documents_rejects_bad_fraction():
    with pytest.raises(ConfigError):
        split_documents(10, 1.0, seed=0)


def _all_rows(packed):
    return packed.batch(np.arange(len(packed)))


@pytest.mark.parametrize("seq_len", [1, 7, 32, 1000])
@pytest.mark.parametrize("selection", ["all", "subset"])
def test_rows_drop_no_text(corpus, seq_len, selection):
    doc_indices = np.arange(corpus.num_documents)
    if selection == "subset":
        doc_indices = np.array([5, 2, 40, 41, 0, 59])
    packed = PackedRows(corpus, doc_indices, seq_len, PAD)
    total = int(corpus.doc_lengths[doc_indices].sum())
    assert len(packed) == -(-total // seq_len)
    batch = _all_rows(packed)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == (len(packed), seq_len) and ids.dtype == torch.long and mask.dtype == torch.long
    expected = np.concatenate([corpus.document(i) for i in doc_indices])
    assert np.array_equal(ids[mask.bool()].numpy(), expected)
    starts = np.concatenate([corpus.word_starts(i) for i in doc_indices])
    assert batch["word_starts"].dtype == torch.bool
    assert np.array_equal(batch["word_starts"][mask.bool()].numpy(), starts)
    assert int(batch["num_tokens"]) == total
    # Only the last row has padding, and pads carry pad_id, document id -1 and no word start.
    assert bool(mask[:-1].all())
    assert bool((ids[mask == 0] == PAD).all()) and bool((batch["document_ids"][mask == 0] == -1).all())
    assert not bool(batch["word_starts"][mask == 0].any())


def test_document_ids_follow_document_boundaries(corpus):
    doc_indices = np.arange(corpus.num_documents)
    packed = PackedRows(corpus, doc_indices, 64, PAD)
    batch = _all_rows(packed)
    which = np.repeat(np.arange(len(doc_indices)), corpus.doc_lengths[doc_indices])  # doc of each token
    which = np.concatenate([which, np.full(len(packed) * 64 - len(which), -1)]).reshape(len(packed), 64)
    expected = np.where(which >= 0, which - which[:, :1], -1)
    assert np.array_equal(batch["document_ids"].numpy(), expected)
    assert int(batch["document_ids"].max()) >= 1  # rows really hold several documents


def test_batch_rows_are_independent_of_batch_composition(corpus):
    packed = PackedRows(corpus, np.arange(corpus.num_documents), 16, PAD)
    together = packed.batch([9, 2, 5])
    for position, row in enumerate([9, 2, 5]):
        alone = packed.batch([row])
        for key in ("input_ids", "attention_mask", "document_ids", "word_starts"):
            assert torch.equal(together[key][position], alone[key][0])
    with pytest.raises(IndexError):
        packed.batch([len(packed)])


def test_memory_is_per_document_not_per_token(corpus):
    packed = PackedRows(corpus, np.arange(corpus.num_documents), 8, PAD)
    arrays = [v for v in vars(packed).values() if isinstance(v, np.ndarray)]
    assert max(a.size for a in arrays) <= corpus.num_documents + 1 < corpus.num_tokens

