"""Span masking (LTG-BERT's SpanMaskingStrategy): lengths, rate, one decision per span, specials,
agreement with the reference's sequential loop, determinism, and the strategy argument."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from masklm.data.masking import (
    SPAN_MAX_SPANS,
    mask_tokens,
    row_generator,
    sample_span_lengths,
    select_spans,
)
from masklm.errors import ConfigError

V, PAD, CLS, SEP, MASK = 1000, 0, 2, 3, 4
SPECIALS = [0, 1, 2, 3, 4]
ALLOWED = np.arange(5, V)


def span_pmf(p: float = 1 / 3, modulo: int = 10) -> np.ndarray:
    """P(Geometric(p) mod modulo = k), k = 0..modulo-1, Geometric on {1, 2, ...}."""
    k = np.arange(modulo)
    # Summing the geometric series over the wrap-arounds k, k + m, k + 2m, ... (k >= 1; k = 0 starts at m).
    first = np.where(k == 0, modulo, k)
    return p * (1 - p) ** (first - 1) / (1 - (1 - p) ** modulo)


def make_rows(B=512, T=128, seed=0):
    """Packed-style rows: [CLS] ... [SEP] [CLS] ... with padding at the end of every third row."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, V, (B, T))
    ids[:, 0] = CLS
    ids[:, T // 2] = SEP
    ids[:, T // 2 + 1] = CLS
    attention = np.ones((B, T), dtype=np.int64)
    for b in range(0, B, 3):
        cut = int(rng.integers(T // 2 + 4, T))
        attention[b, cut:] = 0
        ids[b, cut:] = PAD
    return torch.from_numpy(ids), torch.from_numpy(attention)


def run(ids, attention=None, rows=None, **kwargs):
    kwargs = {"seed": 1, "epoch": 0, "mask_id": MASK, "vocab_size": V, "special_ids": SPECIALS,
              "strategy": "span", **kwargs}
    rows = list(range(len(ids))) if rows is None else rows
    return mask_tokens(ids, rows=rows, attention_mask=attention, **kwargs)


def maskable_of(ids, attention=None):
    maskable = ~np.isin(ids.numpy(), SPECIALS)
    if attention is not None:
        maskable &= attention.numpy().astype(bool)
    return maskable


def reference_loop(ids, maskable, rows, seed, epoch, rate, split):
    """The BabyLM loop written out one span at a time, fed the same per-row draws as select_spans."""
    ids = ids.numpy()
    B, T = ids.shape
    inputs, labels = ids.copy(), np.full_like(ids, -100)
    for b, row in enumerate(rows):
        rng = row_generator(seed, epoch, row)
        m = int(maskable[b].sum())
        n = rng.binomial(m, rate)
        lengths = rng.geometric(1 / 3, SPAN_MAX_SPANS) % 10
        u = rng.random((2, SPAN_MAX_SPANS))
        picks = rng.integers(0, len(ALLOWED), T)
        n = min(m, max(1, n))
        marked = np.zeros(T, dtype=bool)
        k = 0
        while n > marked.sum() and k < SPAN_MAX_SPANS:
            span = int(lengths[k])
            offset = int(np.floor(u[0, k] * (T + 2 * span - 1))) - (span - 1)  # in [-(l-1), T+l)
            sub = np.zeros(T, dtype=bool)
            sub[max(0, offset):min(T - 1, offset + span)] = True
            sub &= maskable[b]
            if u[1, k] < split[0]:
                inputs[b, sub] = MASK
            elif u[1, k] < split[0] + split[1]:
                inputs[b, sub] = ALLOWED[picks[sub]]
            else:
                inputs[b, sub] = ids[b, sub]
            marked |= sub
            k += 1
        labels[b, marked] = ids[b, marked]
    return inputs, labels


def test_span_length_sampler_is_geometric_third_mod_ten():
    lengths = sample_span_lengths(np.random.default_rng(0), 400_000)
    assert lengths.min() == 0 and lengths.max() == 9
    freq = np.bincount(lengths, minlength=10) / len(lengths)
    pmf = span_pmf()
    # 400k draws: the standard error of each bin is <= 0.0008; 0.003 is ~4 of them.
    np.testing.assert_allclose(freq, pmf, atol=0.003)
    assert abs(freq[0] - 0.00882) < 0.001  # the wrapped no-op length; a plain Geometric has no 0
    mean = (np.arange(10) * pmf).sum()  # 2.735: a plain Geometric(1/3) would have mean 3
    assert abs(lengths.mean() - mean) < 0.01 and abs(mean - 2.7353) < 1e-4  # the literal has 4 decimals


def test_isolated_spans_have_geometric_lengths():
    # Long rows at a tiny rate: about two spans per row, which rarely touch, so every contiguous run of
    # masked tokens is one span and the run lengths follow the sampler's law given length >= 1.
    ids = torch.randint(5, V, (400, 2000))
    _, labels = run(ids, rate=0.003)
    chosen = (labels != -100).numpy()
    padded = np.pad(chosen, ((0, 0), (1, 1))).astype(np.int8)
    edges = np.diff(padded, axis=1)
    runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    pmf = span_pmf()[1:] / span_pmf()[1:].sum()
    assert len(runs) > 700
    assert abs(runs.mean() - (np.arange(1, 10) * pmf).sum()) < 0.15  # expected 2.76; SE about 0.07
    assert runs.max() <= 9 or (runs > 9).mean() < 0.01  # only merged neighbours exceed 9
    assert abs((runs == 1).mean() - pmf[0]) < 0.05


@pytest.mark.parametrize("T,rows,low,high", [(128, 2000, 0.155, 0.167), (512, 600, 0.151, 0.1565)])
def test_realised_rate_overshoots_by_the_last_span(T, rows, low, high):
    # E[n] = rate * m; the loop then stops inside the span that crosses n, overshooting by the renewal
    # excess E[l^2] / (2 E[l]) - 1/2 ~ 1.56 tokens per row for l >= 1 (a little less, since spans
    # overlap and get clipped). So the realised rate is 0.15 + ~1.5/m: ~0.162 at m = 127, ~0.153 at m = 511.
    # Over these rows the sampling noise is < 0.001, so the bands are several standard errors wide.
    ids = torch.randint(5, V, (rows, T))
    ids[:, 0] = CLS
    _, labels = run(ids, rate=0.15)
    realised = (labels != -100).sum().item() / (rows * (T - 1))
    assert low < realised < high, realised


def test_matches_the_sequential_reference_loop():
    ids, attention = make_rows(B=96, T=64)
    rows = [int(r) for r in np.random.default_rng(3).integers(0, 10**6, 96)]
    maskable = maskable_of(ids, attention)
    for rate, split in [(0.15, (0.8, 0.1, 0.1)), (0.5, (0.4, 0.3, 0.3)), (0.02, (0.8, 0.1, 0.1))]:
        inputs, labels = run(ids, attention, rows=rows, rate=rate, split=split, seed=7, epoch=2)
        ref_inputs, ref_labels = reference_loop(ids, maskable, rows, 7, 2, rate, split)
        assert np.array_equal(labels.numpy(), ref_labels)
        assert np.array_equal(inputs.numpy(), ref_inputs)


def test_one_decision_per_span():
    ids, attention = make_rows(B=400)
    maskable = maskable_of(ids, attention)
    sel = select_spans(maskable, rows=range(400), seed=0, epoch=0, rate=0.3, split=(0.5, 0.25, 0.25),
                       n_replacements=len(ALLOWED))
    outcome = np.where(sel.to_mask, 0, np.where(sel.to_random, 1, 2))
    spans = 0
    for b in range(400):
        for k in np.unique(sel.owner[b][sel.chosen[b]]):
            members = outcome[b][sel.owner[b] == k]
            assert (members == members[0]).all()
            spans += len(members) > 1
    assert spans > 2000
    assert np.array_equal(sel.owner >= 0, sel.chosen) and (sel.spans_used <= SPAN_MAX_SPANS).all()

    # Black box: with a 50/50 mask/keep split, per-token decisions would mix 50-94% of the masked runs
    # of 2-5 tokens; per-span decisions mix only where two spans overlap or touch.
    inputs, labels = run(ids, attention, rate=0.15, split=(0.5, 0.0, 0.5))
    chosen, masked = (labels != -100).numpy(), (inputs == MASK).numpy()
    mixed = total = 0
    for b in range(len(ids)):
        edges = np.diff(np.pad(chosen[b], 1).astype(np.int8))
        for s, e in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
            if e - s > 1:
                total += 1
                mixed += 0 < masked[b, s:e].sum() < e - s
    assert total > 1000 and mixed / total < 0.2, (mixed, total)


def test_specials_padding_and_last_position_are_never_masked():
    ids, attention = make_rows()
    inputs, labels = run(ids, attention, rate=0.4, split=(0.0, 1.0, 0.0))
    chosen = (labels != -100).numpy()
    assert not chosen[~maskable_of(ids, attention)].any()
    assert not chosen[:, -1].any()  # the reference never marks position T-1
    assert chosen[:, -2].any()
    assert np.array_equal(labels.numpy()[chosen], ids.numpy()[chosen])
    assert np.array_equal(inputs.numpy()[~chosen], ids.numpy()[~chosen])
    replaced = inputs.numpy()[chosen]
    assert replaced.min() >= 5 and not np.isin(replaced, SPECIALS).any()  # random ids never special
    assert (replaced != ids.numpy()[chosen]).mean() > 0.99


def test_at_least_one_token_and_split_shares():
    ids = torch.randint(5, V, (3000, 32))
    ids[:, 0] = CLS
    inputs, labels = run(ids, rate=0.001)  # Binomial(31, 0.001) is mostly 0; the floor makes it 1
    per_row = (labels != -100).sum(1)
    assert (per_row >= 1).all() and per_row.float().mean() < 3.5
    ids, attention = make_rows(B=2000)
    inputs, labels = run(ids, attention)
    chosen = labels != -100
    # Shares are per span, so they scatter more than per token; 2000 rows hold ~8000 spans.
    assert abs(((inputs == MASK) & chosen).sum().item() / chosen.sum().item() - 0.8) < 0.03
    assert abs(((inputs != MASK) & (inputs != ids) & chosen).sum().item() / chosen.sum().item() - 0.1) < 0.03


def test_rows_without_maskable_tokens_are_left_alone():
    ids = torch.tensor([[CLS, SEP, PAD, PAD], [CLS, 10, 11, SEP]])
    inputs, labels = run(ids, torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]))
    assert (labels[0] == -100).all() and torch.equal(inputs[0], ids[0])


def test_deterministic_and_independent_of_batch():
    ids, attention = make_rows(B=8)
    rows = [100, 7, 55, 3, 9, 12, 1000, 42]
    full = run(ids, attention, rows=rows)
    assert all(torch.equal(a, b) for a, b in zip(full, run(ids, attention, rows=rows)))
    assert not torch.equal(run(ids, attention, rows=rows, epoch=1)[1], full[1])
    assert not torch.equal(run(ids, attention, rows=rows, seed=2)[1], full[1])
    for pick in ([2], [5, 0], [7, 3, 1]):
        inputs, labels = run(ids[pick], attention[pick], rows=[rows[i] for i in pick])
        assert torch.equal(inputs, full[0][pick]) and torch.equal(labels, full[1][pick])


def test_strategy_argument():
    ids, attention = make_rows(B=4)
    starts = torch.ones_like(ids, dtype=torch.bool)
    base = {"rows": [0, 1, 2, 3], "seed": 0, "epoch": 0, "mask_id": MASK, "vocab_size": V,
            "special_ids": SPECIALS, "attention_mask": attention}
    # the default is "token", and whole words of one token each are token-level masking
    words = mask_tokens(ids, strategy="whole-word", word_starts=starts, **base)
    assert all(torch.equal(a, b) for a, b in zip(words, mask_tokens(ids, strategy="token", **base)))
    assert all(torch.equal(a, b) for a, b in zip(mask_tokens(ids, **base), mask_tokens(ids, strategy="token", **base)))
    with pytest.raises(ConfigError, match="unknown masking strategy 'spans'"):
        mask_tokens(ids, strategy="spans", **base)

