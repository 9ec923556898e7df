"""Masking: rates, split, specials, determinism per row, batch independence, whole words."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from masklm.data.masking import mask_tokens
from masklm.errors import ConfigError

V, PAD, CLS, SEP, MASK = 1000, 0, 2, 3, 4
SPECIALS = [0, 1, 2, 3, 4]


def make_batch(B=256, T=128, seed=0, max_word=4):
    """Rows of [CLS] words [SEP] ... with padding at the end of some rows -> (ids, attention, word_starts)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, V, (B, T))
    starts = np.zeros((B, T), dtype=bool)
    for b in range(B):
        t = 0
        while t < T:
            length = int(rng.integers(1, max_word + 1))
            starts[b, t] = True
            t += length
    ids[:, 0] = CLS
    ids[:, 60] = SEP
    ids[:, 61] = CLS
    starts[:, [0, 60, 61]] = False
    starts[:, [1, 62]] = True  # a special token ends a word
    attention = np.ones((B, T), dtype=np.int64)
    for b in range(0, B, 3):
        cut = int(rng.integers(70, T))
        attention[b, cut:] = 0
        ids[b, cut:] = PAD
        starts[b, cut:] = False
    return torch.from_numpy(ids), torch.from_numpy(attention), torch.from_numpy(starts)


def run(ids, attention, starts=None, rows=None, **kwargs):
    kwargs = {"seed": 1, "epoch": 0, "mask_id": MASK, "vocab_size": V, "special_ids": SPECIALS, **kwargs}
    rows = list(range(len(ids))) if rows is None else rows
    return mask_tokens(ids, rows=rows, attention_mask=attention, word_starts=starts, **kwargs)


@pytest.mark.parametrize("strategy", ["token", "whole-word"])
@pytest.mark.parametrize("rate", [0.15, 0.4])
def test_rate_split_and_specials(strategy, rate):
    ids, attention, starts = make_batch()
    inputs, labels = run(ids, attention, starts, strategy=strategy, rate=rate)
    assert inputs.shape == ids.shape and inputs.dtype == torch.long and labels.dtype == torch.long
    maskable = attention.bool() & ~torch.isin(ids, torch.tensor(SPECIALS))
    chosen = labels != -100
    assert not bool(chosen[~maskable].any())  # specials and pads never chosen
    assert torch.equal(inputs[~chosen], ids[~chosen])
    assert torch.equal(labels[chosen], ids[chosen])
    realised = chosen.sum().item() / maskable.sum().item()
    assert abs(realised - rate) < 0.01, realised
    n = chosen.sum().item()
    masked = (inputs == MASK) & chosen
    randomised = (inputs != MASK) & (inputs != ids) & chosen
    assert abs(masked.sum().item() / n - 0.8) < 0.03
    assert abs(randomised.sum().item() / n - 0.1) < 0.03  # equal-to-original draws are ~0.1% here
    assert not bool(torch.isin(inputs[randomised], torch.tensor(SPECIALS)).any())


def test_rate_is_unbiased_for_short_rows():
    ids = torch.randint(5, V, (4000, 6))
    ids[:, 0] = CLS  # five maskable tokens per row: 0.75 expected masks, so rounding would bias it
    _, labels = run(ids, None)
    assert abs((labels != -100).sum().item() / (4000 * 5) - 0.15) < 0.01


def test_random_replacements_are_uniform_over_non_special_ids():
    ids, attention, _ = make_batch()
    inputs, labels = run(ids, attention, split=(0.0, 1.0, 0.0), rate=0.5)
    values = inputs[labels != -100]
    assert int(values.min()) >= 5 and int(values.max()) < V
    counts = np.bincount(values.numpy(), minlength=V)[5:]
    assert (counts > 0).mean() > 0.99  # about 14 draws per id: nearly every id appears


def test_custom_split_all_kept():
    ids, attention, _ = make_batch(B=16)
    inputs, labels = run(ids, attention, split=(0.0, 0.0, 1.0))
    assert (labels != -100).any() and torch.equal(inputs, ids)


def test_deterministic_per_seed_epoch_row():
    ids, attention, starts = make_batch(B=32)
    first = run(ids, attention, starts, strategy="whole-word")
    again = run(ids, attention, starts, strategy="whole-word")
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(run(ids, attention, starts, strategy="whole-word", epoch=1)[1], first[1])
    assert not torch.equal(run(ids, attention, starts, strategy="whole-word", seed=2)[1], first[1])


@pytest.mark.parametrize("strategy", ["token", "whole-word"])
def test_independent_of_batch_composition(strategy):
    ids, attention, starts = make_batch(B=8)
    rows = [100, 7, 55, 3, 9, 12, 1000, 42]
    full_inputs, full_labels = run(ids, attention, starts, rows=rows, strategy=strategy)
    for pick in ([2], [5, 0], [7, 3, 1]):
        inputs, labels = run(ids[pick], attention[pick], starts[pick], rows=[rows[i] for i in pick],
                             strategy=strategy)
        assert torch.equal(inputs, full_inputs[pick]) and torch.equal(labels, full_labels[pick])


def test_whole_words_are_all_or_nothing():
    ids, attention, starts = make_batch(max_word=5)
    _, labels = run(ids, attention, starts, strategy="whole-word")
    chosen = (labels != -100).numpy()
    maskable = attention.numpy().astype(bool) & ~np.isin(ids.numpy(), SPECIALS)
    word = np.cumsum(starts.numpy(), axis=1)
    multi = 0
    for b in range(len(ids)):
        for w in np.unique(word[b][maskable[b]]):
            members = chosen[b][(word[b] == w) & maskable[b]]
            assert members.all() or not members.any()
            multi += members.all() and len(members) > 1
    assert multi > 100  # many multi-token words were masked whole


def test_row_starting_mid_word_keeps_the_fragment_whole():
    ids = torch.randint(5, V, (2000, 8))
    starts = torch.zeros(2000, 8, dtype=torch.bool)
    starts[:, 4] = True  # tokens 0-3 continue a word from the previous row, 4-7 are one word
    _, labels = run(ids, None, starts, strategy="whole-word", rate=0.5)
    chosen = labels != -100
    assert torch.equal(chosen[:, :4].all(1), chosen[:, :4].any(1))
    assert torch.equal(chosen[:, 4:].all(1), chosen[:, 4:].any(1))
    assert 0.4 < chosen.float().mean().item() < 0.6


def test_bad_arguments():
    ids, attention, starts = make_batch(B=2)
    with pytest.raises(ConfigError, match="split"):
        run(ids, attention, split=(0.5, 0.1, 0.1))
    with pytest.raises(ConfigError, match="word_starts"):
        run(ids, attention, None, strategy="whole-word")
    with pytest.raises(ConfigError, match="rows"):
        run(ids, attention, rows=[0])

