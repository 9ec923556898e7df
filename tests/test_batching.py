"""Inference plumbing (masklm.inference.batching): padding, token-budget batches, and the one "input too
long" check that fill-mask, scoring, embeddings, fine-tuning, generation and the server all answer with."""

from __future__ import annotations

import re

import pytest
import torch

from masklm.config import ModelConfig
from masklm.errors import InputError
from masklm.finetune.encode import encode_text
from masklm.generation import GenerationConfig, generate
from masklm.inference.batching import (
    budget_cuts,
    check_length,
    encode,
    longest_first,
    mask_or_none,
    pad,
    resolve_batch_tokens,
    token_batches,
    too_long,
)
from masklm.inference.pipeline import Pipeline
from masklm.models import build_model
from masklm.serve.limits import Limits, ServeError, check_encoded

MAX = 16


@pytest.fixture(scope="module")
def pipe(wordpiece_tokenizer) -> Pipeline:
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=wordpiece_tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=32, max_position_embeddings=MAX))
    return Pipeline(model, wordpiece_tokenizer)


def test_pad_and_mask():
    values, mask = pad([[5, 6, 7], [8], [9, 9]], fill=0)
    assert values.tolist() == [[5, 6, 7], [8, 0, 0], [9, 9, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]] and values.dtype == mask.dtype == torch.long
    assert pad([[1], [2, 3]], fill=-100)[0].tolist() == [[1, -100], [2, 3]]  # label rows
    assert mask_or_none(torch.ones(2, 3, dtype=torch.long)) is None
    assert torch.equal(mask_or_none(mask), mask)


def test_token_batches_stay_within_the_budget():
    lengths = [3, 9, 4, 9, 1, 5]
    order = longest_first(lengths)
    assert order == [1, 3, 5, 2, 0, 4]  # ties keep their order
    widths = [lengths[i] for i in order]
    batches = list(token_batches(widths, 18))
    assert batches == [(0, 2), (2, 5), (5, 6)]  # 2 x 9, 3 x 5, 1 x 1
    assert all((hi - lo) * widths[lo] <= 18 for lo, hi in batches)
    assert list(token_batches([40, 2], 18)) == [(0, 1), (1, 2)]  # a row over the budget still gets a batch
    assert resolve_batch_tokens(None, torch.device("cpu")) == 4096
    with pytest.raises(InputError, match="batch_tokens must be >= 1"):
        resolve_batch_tokens(0, torch.device("cpu"))


def test_every_reader_answers_too_long_inputs_with_the_same_message(pipe, wordpiece_tokenizer):
    tok = wordpiece_tokenizer
    long = "the river " * 20
    n = len(tok.encode(long).ids)
    assert too_long("input 0", n, MAX) == (f"input 0 is {n} tokens long, more than the model's maximum of {MAX} "
                                           "tokens; shorten or split it (nothing is truncated)")
    shape = re.compile(r"is \d+ tokens long, more than (the model's maximum|this server's limit) of \d+ tokens; "
                       r".* \(nothing is truncated\)$")
    calls = [lambda: pipe.fill_mask(long + "[MASK]"), lambda: pipe.score(["a", long]), lambda: pipe.embed(long),
             lambda: encode_text(tok, long, None, MAX, "line 3"), lambda: encode(tok, ["ok", long], MAX, "text"),
             lambda: generate(pipe.model, tok, "the", GenerationConfig(length=MAX))]
    for call in calls:
        with pytest.raises(InputError) as info:
            call()
        assert shape.search(str(info.value)), str(info.value)
    with pytest.raises(InputError, match=r"^sentence 1 is"):
        pipe.score(["a", long])
    with pytest.raises(ServeError, match=shape) as info:  # the server's own bound: 413
        check_encoded([tok.encode(long).ids], [long], Limits(max_tokens=8))
    assert info.value.status == 413 and info.value.message.startswith("inputs[0] is")
    check_length(MAX, MAX, "input")  # exactly the maximum is fine
    with pytest.raises(InputError, match="input 1 is int, not a string"):
        encode(tok, ["a", 3], MAX)


def test_budget_cuts_keep_order_and_the_budget_and_match_token_batches():
    # (rows, width) in arrival order: rows x widest width within 24 tokens, at least one item per cut
    sizes = [(2, 4), (1, 8), (3, 3), (1, 30), (2, 2), (2, 5)]
    cuts = list(budget_cuts(sizes, 24))
    assert cuts == [(0, 2), (2, 3), (3, 4), (4, 6)]
    for lo, hi in cuts:
        rows, width = sum(r for r, _ in sizes[lo:hi]), max(w for _, w in sizes[lo:hi])
        assert rows * width <= 24 or hi - lo == 1
    widths = sorted([9, 7, 7, 5, 3, 3, 3, 1], reverse=True)
    assert list(token_batches(widths, 20)) == list(budget_cuts([(1, w) for w in widths], 20)) \
        == [(0, 2), (2, 4), (4, 8)]
