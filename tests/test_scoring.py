"""Sentence scoring: every metric against a naive loop, a hand-computed toy, batching, errors, CLI."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import approx, forward_terms, tolerance
from tokenizers import Tokenizer as Backend
from tokenizers import models, pre_tokenizers, processors

from masklm.cli import main
from masklm.config import ModelConfig
from masklm.errors import InputError
from masklm.inference.pipeline import Pipeline
from masklm.modeldir import save_model_dir
from masklm.models import build_model
from masklm.scoring import METRICS
from masklm.scoring.pll import token_logprobs
from masklm.tokenizer import SPECIAL_TOKENS, Tokenizer, train_tokenizer

# Long words and a small vocabulary, so many words split into several pieces (pll-word-l2r matters).
WORDS = "the a of cat dog sat ran unbelievable extraordinary wandering shepherds lantern river .".split()
SENTENCES = [
    "the cat sat .",
    "unbelievable shepherds ran of the river",
    "a dog sat",
    "the extraordinary lantern .",
    "wandering",
]


def _tokenizer() -> Tokenizer:
    rng = random.Random(0)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(80)]
    return train_tokenizer(docs, kind="wordpiece", vocab_size=70, min_frequency=1)


def _pipe(arch: str, tokenizer: Tokenizer) -> Pipeline:
    torch.manual_seed(1)
    config = ModelConfig(arch=arch, vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=48)
    model = build_model(config)
    with torch.no_grad():  # an untrained model is nearly uniform; large weights make peaked, varied scores
        for p in model.parameters():
            p.normal_(0.0, 0.4)
    return Pipeline(model, tokenizer)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return _tokenizer()


@pytest.fixture(scope="module", params=["bert", "gpt-bert"])
def pipe(request, tokenizer) -> Pipeline:
    return _pipe(request.param, tokenizer)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    p = _pipe("bert", tokenizer)
    return save_model_dir(tmp_path_factory.mktemp("score") / "model", p.model, tokenizer)


def naive_logprobs(pipe: Pipeline, sentence: str, metric: str) -> list[float]:
    """One sentence, one token at a time, a full forward with full logits at every position."""
    enc = pipe.tokenizer.encode(sentence)
    ids = torch.tensor(enc.ids)
    mask = pipe.tokenizer.mask_id
    out = []
    with torch.no_grad():
        for p in range(len(ids)):
            if enc.special_tokens_mask[p]:
                continue
            if metric == "causal":
                logits = pipe.model(ids[None], causal=True).logits[0]          # [T, V]
                out.append(float(logits[p - 1].log_softmax(-1)[ids[p]]))
                continue
            x = ids.clone()
            x[p] = mask
            if metric == "pll-word-l2r":
                for q in range(p + 1, len(ids)):
                    if enc.word_ids[q] is not None and enc.word_ids[q] == enc.word_ids[p]:
                        x[q] = mask
            logits = pipe.model(x[None]).logits[0]                              # [T, V]
            read = p - 1 if metric == "mntp" else p
            out.append(float(logits[read].log_softmax(-1)[ids[p]]))
    return out


@pytest.mark.parametrize("metric", METRICS)
def test_every_metric_equals_the_naive_loop(pipe, metric):
    got = pipe.score(SENTENCES, metric=metric, per_token=True, batch_tokens=64)
    n = forward_terms(pipe.config, softmax=True)  # a log-probability: log-softmax over the vocabulary
    for sentence, result in zip(SENTENCES, got):
        want = naive_logprobs(pipe, sentence, metric)
        assert len(result["tokens"]) == len(want)
        assert [lp for _, lp in result["tokens"]] == approx(want, n=n, scale=max(map(abs, want)))
        assert result["score"] == approx(sum(want), n=n)  # same-sign terms: as exact, relatively, as each
        pieces = pipe.tokenizer.encode(sentence).tokens[1:-1]
        assert [t for t, _ in result["tokens"]] == pieces  # specials never scored
    # the scores are far from uniform, so a wrong position or mask would show
    flat = [lp for r in got for _, lp in r["tokens"]]
    assert max(flat) - min(flat) > 2.0


def test_metrics_differ_where_they_should(pipe):
    pll = pipe.score(SENTENCES, metric="pll")
    l2r = pipe.score(SENTENCES, metric="pll-word-l2r")
    multi = [len(set(w for w in pipe.tokenizer.encode(s).word_ids if w is not None))
             < len(pipe.tokenizer.encode(s).ids) - 2 for s in SENTENCES]
    assert any(multi)
    for a, b, has_multi_piece_word in zip(pll, l2r, multi):
        if has_multi_piece_word:
            assert abs(a - b) > 1e-3
        else:
            assert a == approx(b, n=forward_terms(pipe.config, softmax=True))
    assert pipe.score(SENTENCES[0], metric="mntp") != pytest.approx(pll[0], abs=1e-3)


def test_reduction_single_and_batching(pipe):
    sums = pipe.score(SENTENCES, reduction="sum")
    means = pipe.score(SENTENCES, reduction="mean")
    counts = [len(pipe.tokenizer.encode(s).ids) - 2 for s in SENTENCES]
    assert means == approx([s / n for s, n in zip(sums, counts)], n=max(counts))  # the same terms, re-summed
    assert isinstance(pipe.score(SENTENCES[1]), float)
    terms = forward_terms(pipe.config, softmax=True)  # a sentence alone or in a batch: another forward
    assert pipe.score(SENTENCES[1]) == approx(sums[1], n=terms)
    # one row per batch, one huge batch and the default give the same numbers (up to rounding: a row's
    # float32 sums depend on which rows share its batch)
    for budget in (1, 10**6):
        assert pipe.score(SENTENCES, batch_tokens=budget) == approx(sums, n=terms)


def test_head_runs_only_at_scored_positions_and_batches_respect_the_budget(pipe, monkeypatch):
    model = pipe.model
    shapes, heads = [], []
    encode, predict = model.encode, model.predict
    monkeypatch.setattr(model, "encode", lambda ids, **kw: (shapes.append(tuple(ids.shape)), encode(ids, **kw))[1])
    monkeypatch.setattr(model, "predict", lambda h: (heads.append(tuple(h.shape)), predict(h))[1])
    n_tokens = sum(len(pipe.tokenizer.encode(s).ids) - 2 for s in SENTENCES)
    pipe.score(SENTENCES, metric="pll", batch_tokens=40)
    assert all(b * t <= 40 for b, t in shapes)
    assert sum(b for b, _ in shapes) == n_tokens  # one masked copy per scored token
    assert all(len(h) == 2 for h in heads) and sum(h[0] for h in heads) == n_tokens
    # several sentences' copies share one batch when the budget allows
    shapes.clear()
    pipe.score(SENTENCES, metric="pll", batch_tokens=10**6)
    assert len(shapes) == 1 and shapes[0][0] == n_tokens
    shapes.clear()
    heads.clear()
    pipe.score(SENTENCES, metric="causal", batch_tokens=10**6)
    assert shapes[0][0] == len(SENTENCES) and heads[0][0] == n_tokens  # causal: one row per sentence


class CountingModel(torch.nn.Module):
    """A toy with a two-token vocabulary {a, b}: logit(a) = number of unmasked 'a' the position sees,
    logit(b) = 0, every other token -inf. So P(a) = e^c / (e^c + 1), computable by hand."""

    def __init__(self, a_id: int, b_id: int, vocab: int) -> None:
        super().__init__()
        self.a_id, self.b_id, self.vocab = a_id, b_id, vocab
        self.config = SimpleNamespace(max_position_embeddings=16, hidden_size=1)
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def encode(self, input_ids, attention_mask=None, causal=False, document_ids=None):
        a = (input_ids == self.a_id).float()                      # [B, T]
        if attention_mask is not None:
            a = a * attention_mask
        count = a.cumsum(1) if causal else a.sum(1, keepdim=True).expand_as(a)
        return count[..., None]                                   # [B, T, 1]

    def predict(self, hidden):
        logits = torch.full((*hidden.shape[:-1], self.vocab), float("-inf"))
        logits[..., self.a_id] = hidden[..., 0]
        logits[..., self.b_id] = 0.0
        return logits


def test_pll_equals_a_hand_computed_value():
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + ["a", "b"])}
    backend = Backend(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok = Tokenizer(backend)
    pipe = Pipeline(CountingModel(vocab["a"], vocab["b"], len(vocab)), tok)
    e = math.e
    # "a b a": masking an 'a' leaves one 'a' visible -> log(e / (1 + e)); masking 'b' leaves two -> log(1 / (1 + e^2))
    log_a1 = 1 - math.log(1 + e)
    log_b2 = -math.log(1 + e * e)
    # float32 logits, each log-probability a log-softmax over two finite logits (n=2), summed in float32
    assert pipe.score("a b a") == approx(2 * log_a1 + log_b2, n=3)
    assert pipe.score("a b a", reduction="mean") == approx((2 * log_a1 + log_b2) / 3, n=3)
    res = pipe.score("a b a", per_token=True)
    assert res["tokens"] == [("a", approx(log_a1, n=2)), ("b", approx(log_b2, n=2)), ("a", approx(log_a1, n=2))]
    # "b b": no 'a' anywhere -> each b has probability 1/2
    assert pipe.score("b b") == approx(2 * math.log(0.5), n=2)
    # causal "a b a": read at i-1, which sees the 'a's up to i-1: [CLS] -> 0, "a" -> 1, "a b" -> 1
    assert pipe.score("a b a", metric="causal") == approx(math.log(0.5) - math.log(1 + e) + log_a1, n=3)


def test_bad_input(pipe):
    with pytest.raises(InputError, match="sentence 1 .*no tokens to score"):
        pipe.score(["the cat", ""])
    with pytest.raises(InputError, match="no tokens to score"):
        pipe.score("   ")
    with pytest.raises(InputError, match="maximum of 48.*nothing is truncated"):
        pipe.score("the cat " * 40)
    with pytest.raises(InputError, match="unknown metric 'ppl'"):
        pipe.score("the cat", metric="ppl")
    with pytest.raises(InputError, match="unknown reduction"):
        pipe.score("the cat", reduction="max")
    with pytest.raises(InputError, match="not a string"):
        pipe.score(["the cat", 3])
    with pytest.raises(InputError, match="no sentences"):
        pipe.score([])


def test_cli(model_dir, tmp_path, capsys):
    import masklm

    pipe = masklm.load(model_dir)
    want = pipe.score(SENTENCES[:2], metric="pll-word-l2r")
    terms = forward_terms(pipe.config, softmax=True)  # the CLI's own forward passes: rounding may differ
    assert main(["score", "--model", str(model_dir), "--metric", "pll-word-l2r", "--json", *SENTENCES[:2]]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["sentence"] for r in out] == SENTENCES[:2]
    assert [r["score"] for r in out] == approx(want, n=terms)
    (tmp_path / "in.txt").write_text("\n".join(SENTENCES[:2]) + "\n\n")
    assert main(["score", "--model", str(model_dir), "--input", str(tmp_path / "in.txt"), "--metric",
                 "pll-word-l2r", "--reduction", "mean", "--per-token"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    first = lines[0].split("\t")
    n = len(pipe.tokenizer.encode(SENTENCES[0]).ids) - 2
    # printed with 4 decimals: off by at most half a unit of the last digit, plus rounding
    assert float(first[0]) == pytest.approx(want[0] / n, abs=0.5e-4 + tolerance(abs(want[0] / n), n=terms))
    assert first[1] == SENTENCES[0]
    assert any(line.startswith("  ") for line in lines)  # per-token lines
    assert main(["score", "--model", str(model_dir), ""]) == 2
    assert "no tokens to score; remove empty sentences" in capsys.readouterr().err
    assert main(["score", "--model", str(model_dir), "Über ÿ"]) == 2  # not empty: nothing this tokenizer can spell
    assert "no tokens to score; every word of it is [UNK] to this tokenizer" in capsys.readouterr().err
    unknown = pipe.tokenizer.encode(f"{SENTENCES[0]} 12345 Ø").ids.count(pipe.tokenizer.unk_id)
    assert unknown >= 1
    assert main(["score", "--model", str(model_dir), SENTENCES[1], f"{SENTENCES[0]} 12345 Ø"]) == 0
    assert (f"1 of 2 sentences holds [UNK] tokens ({unknown} in all: text the tokenizer cannot spell), which are "
            "not scored") in capsys.readouterr().err
    assert main(["score", "--model", str(model_dir), "--input", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt" in capsys.readouterr().err
    assert main(["score", "--model", str(model_dir)]) == 2
    assert "no sentences" in capsys.readouterr().err
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text(json.dumps({"text": SENTENCES[0]}) + "\n\n" + json.dumps({"text": SENTENCES[1]}) + "\n")
    assert main(["score", "--model", str(model_dir), "--input", str(jsonl), "--metric", "pll-word-l2r",
                 "--json"]) == 0
    assert [r["score"] for r in json.loads(capsys.readouterr().out)] == approx(want, n=terms)
    bad = [("{not json", "in.jsonl:2: not valid JSON"),
           ('{"txt": "a"}', 'in.jsonl:2: expected an object with a string "text" field'),
           ('["a"]', 'in.jsonl:2: expected an object with a string "text" field, got list')]
    for line, message in bad:
        jsonl.write_text(json.dumps({"text": "a"}) + "\n" + line + "\n")
        assert main(["score", "--model", str(model_dir), "--input", str(jsonl)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("arch", ["bert", "ltg-bert", "gpt-bert"])
@pytest.mark.parametrize("metric", ["pll", "pll-word-l2r", "mntp"])
def test_last_layer_only_at_scored_positions_equals_the_full_computation(tokenizer, arch, metric):
    """PLL runs the last layer (and the head) only at the read position of each masked copy (encode_at):
    scores equal the full encoder's within 1e-4 nats, and the last layer's FFN saw one row per copy."""
    pipe = _pipe(arch, tokenizer)
    model = pipe.model
    last = model.bert.encoder.layer[-1].intermediate if arch == "bert" else model.transformer.layers[-1].mlp
    rows = []
    handle = last.register_forward_hook(lambda m, args, out: rows.append(tuple(args[0].shape[:2])))
    try:
        _, sparse = token_logprobs(model, tokenizer, SENTENCES, metric, batch_tokens=64)
        copies = sum(b for b, _ in rows)
        assert rows and all(m == 1 for _, m in rows)  # [B, 1, D]: one query row per masked copy
        rows.clear()
        _, full = token_logprobs(model, tokenizer, SENTENCES, metric, batch_tokens=64, sparse=False)
        assert all(m > 1 for _, m in rows) and sum(b for b, _ in rows) == copies
    finally:
        handle.remove()
    diffs = [float(np.abs(a - b).max()) for a, b in zip(sparse, full)]
    assert max(diffs) <= 1e-4
    assert max(float(np.abs(b).max()) for b in full) > 1.0  # far from zero: a wrong row would show
