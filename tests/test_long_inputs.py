"""Inputs longer than the model's maximum, read as overlapping windows: the window arithmetic by hand,
embeddings / classification / tagging against the windows computed by hand, the CLI's counts, and a
task whose label is a keyword 3x past the maximum length, learnt with windows (accuracy >= 0.9) and at
chance when the text is truncated to the maximum."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import close, forward_terms

import masklm
from masklm.cli import main
from masklm.config import ModelConfig
from masklm.errors import InputError
from masklm.finetune import build_finetuned
from masklm.finetune.encode import encode_words_windows
from masklm.finetune.predict import classify, tag
from masklm.inference.batching import WindowSpec, central_windows, pad, window_rows, window_spans
from masklm.modeldir import save_model_dir
from masklm.models import build_model
from masklm.models.heads import pool
from masklm.tokenizer import train_tokenizer

MAX = 32
FILLER = "the a of cat dog sat ran on under mat tree river house big small red green went to".split()


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    rng = random.Random(0)
    docs = [" ".join(rng.choice(FILLER + ["good", "bad", "Anna", "Smith"]) for _ in range(20)) for _ in range(200)]
    tok = train_tokenizer(docs, kind="wordpiece", vocab_size=120, min_frequency=1)
    assert all(len(tok.encode(w, add_special_tokens=False).ids) == 1 for w in FILLER + ["good", "bad"])
    torch.manual_seed(0)
    config = ModelConfig(arch="bert", vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=MAX,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return save_model_dir(tmp_path_factory.mktemp("long") / "base", build_model(config), tok)


def _long_text(rng: random.Random, keyword: str | None = None, n: int = 110, at: int = 100) -> str:
    words = [rng.choice(FILLER) for _ in range(n)]
    if keyword is not None:
        words[at] = keyword
    return " ".join(words)


# ---- the window arithmetic ------------------------------------------------------------------------------

def test_windows_by_hand():
    # 10 tokens, windows of 4 sharing 1 (the stride is the overlap): starts 0, 3, then the last ends at 10
    assert window_spans(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert window_spans(4, 4, 1) == [(0, 4)] and window_spans(2, 4, 3) == [(0, 2)]
    assert window_spans(9, 4, 2) == [(0, 4), (2, 6), (4, 8), (5, 9)]  # the last overlaps by more
    # token 3 is at the edge of window 0 (margin 0) and inside window 1 (margin 0): the earlier wins;
    # token 5 has margin 1 in window 1 ((3,7): 5-3=2, 6-5=1) and 0 in window 2 (6 > 5: not in it)
    assert central_windows([(0, 4), (3, 7), (6, 10)], 10) == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert WindowSpec().overlap(30) == 7 and WindowSpec(stride=0).overlap(30) == 0  # default: a quarter
    with pytest.raises(InputError, match="stride 30 must be smaller than the window of 30"):
        WindowSpec(stride=30).overlap(30)
    with pytest.raises(InputError, match="unknown window pool"):
        WindowSpec(pool="median")
    rows, spans = window_rows(list(range(100, 110)), [1], [2], 6, WindowSpec(stride=1), "input 0")
    assert spans == [(0, 4), (3, 7), (6, 10)]
    assert rows[1] == [1, 103, 104, 105, 106, 2]  # [CLS] piece [SEP], every token read
    with pytest.raises(InputError, match="input 0 .* more than the model's maximum of 5"):
        window_rows([7], [1] * 4, [2] * 2, 6, WindowSpec(), "input 0")


# ---- every reader against the windows computed by hand ------------------------------------------------

def test_embeddings_pool_their_windows(base):
    pipe = masklm.load(base)
    rng = random.Random(5)
    short, long = _long_text(rng, n=10), _long_text(rng, n=80)
    n = forward_terms(pipe.config)
    assert close(pipe.embed(short, windows=True), pipe.embed(short), n=n)  # fits: one window, the same vector
    with pytest.raises(InputError, match="windows"):  # without windows: refused, and told how to read it
        pipe.embed(long)
    tok = pipe.tokenizer
    rows, spans = window_rows(tok.encode(long, add_special_tokens=False).ids, [tok.cls_id], [tok.sep_id], MAX,
                              WindowSpec(stride=5), "text 0")
    assert len(rows) == 3 and spans[-1][1] == len(tok.encode(long).ids) - 2
    ids, mask = pad(rows, tok.pad_id)
    with torch.no_grad():
        per_window = pool(pipe.model.encode(ids, mask), mask.bool(), "mean")  # [3, D]
    for how, want in (("mean", per_window.mean(0)), ("max", per_window.amax(0))):
        used: list[int] = []
        got = pipe.embed([short, long], normalize=False, windows=WindowSpec(stride=5, pool=how), windows_used=used)
        assert used == [1, 3] and close(got[1], want, n=n)


def test_classify_and_tag_read_windows_as_documented(base):
    pipe = masklm.load(base)
    torch.manual_seed(1)
    classifier = build_finetuned(pipe.model, {"type": "classification", "labels": ["a", "b"], "num_labels": 2}).eval()
    tagger = build_finetuned(pipe.model, {"type": "tagging", "labels": ["O", "B-PER", "I-PER"], "num_labels": 3}).eval()
    tok = pipe.tokenizer
    text = _long_text(random.Random(6), n=70)
    spec = WindowSpec(stride=6, pool="max")
    rows, _ = window_rows(tok.encode(text, add_special_tokens=False).ids, [tok.cls_id], [tok.sep_id], MAX, spec, "x")
    ids, mask = pad(rows, tok.pad_id)
    with torch.no_grad():
        want = classifier(ids, mask).amax(0).softmax(-1)  # the windows' logits pooled, then the softmax
    used: list[int] = []
    got = classify(classifier, tok, [text], top_k=None, windows=spec, windows_used=used)[0]
    assert used == [len(rows)] == [3]
    assert close([r["score"] for r in sorted(got, key=lambda r: r["label"])], want, n=forward_terms(pipe.config))
    with pytest.raises(InputError, match="windows"):
        classify(classifier, tok, text)  # a folder fine-tuned without windows refuses unless asked

    words = text.split()
    rows, spans, first = encode_words_windows(tok, words, MAX, spec, "x")
    ids, mask = pad(rows, tok.pad_id)
    with torch.no_grad():
        logits = tagger(ids, mask)  # [W, T, 3]
    owner = central_windows(spans, spans[-1][1])
    want_tags = [["O", "B-PER", "I-PER"][int(logits[owner[p], p - spans[owner[p]][0] + 1].argmax())] for p in first]
    got = tag(tagger, tok, text, aggregate=False, windows=spec)
    assert [w["entity"] for w in got] == want_tags and len(got) == len(words) == 70
    assert {owner[p] for p in first} == {0, 1, 2}  # each window supplies some words
    assert all(text[w["start"]:w["end"]] == w["word"] for w in got)


# ---- the bar: a keyword 3x past the maximum length ---------------------------------------------------

def _keyword_files(root: Path, truncate: bool) -> tuple[Path, Path]:
    """Texts of 110 filler words whose label is the keyword at word 96-104 (3x the maximum of 32 tokens);
    ``truncate`` keeps the first 30 words, what fits the model."""
    rng = random.Random(7)
    files = []
    for name, n in (("train", 480), ("valid", 100)):
        labels = ["good", "bad"] * (n // 2)
        rng.shuffle(labels)
        records = []
        for label in labels:
            text = _long_text(rng, label, at=rng.randint(96, 104))
            records.append({"text": " ".join(text.split()[:30]) if truncate else text, "label": label})
        files.append(root / f"{name}{'-cut' if truncate else ''}.jsonl")
        files[-1].write_text("".join(json.dumps(r) + "\n" for r in records))
    return files[0], files[1]


@pytest.mark.slow
def test_a_keyword_past_the_maximum_is_learnt_with_windows_and_lost_to_truncation(base, tmp_path, capsys):
    train, valid = _keyword_files(tmp_path, truncate=False)
    common = ["--task", "classification", "--lr", "3e-3", "--batch-size", "16", "--epochs", "10", "--json"]
    assert main(["finetune", "--model", str(base), "--train", str(train), "--validation", str(valid),
                 "--out", str(tmp_path / "win"), "--window-pool", "max", "--patience", "6", *common]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["validation"]["accuracy"] >= 0.9
    assert result["windows"]["train"] == {"examples": 480, "windows": 480 * 5, "max_per_example": 5}
    assert "480 examples as 2400 windows" in captured.err
    assert json.loads((tmp_path / "win" / "config.json").read_text())["task"]["windows"] == {"stride": None,
                                                                                           "pool": "max"}

    cut_train, cut_valid = _keyword_files(tmp_path, truncate=True)
    assert main(["finetune", "--model", str(base), "--train", str(cut_train), "--validation", str(cut_valid),
                 "--out", str(tmp_path / "cut"), "--patience", "3", *common]) == 0
    cut = json.loads(capsys.readouterr().out)
    assert cut["windows"] is None and max(h["accuracy"] for h in cut["history"]) <= 0.7  # chance: 0.5 +- 0.05

    # predict reads long texts the way the folder was trained; a folder trained without windows refuses them
    rng = random.Random(8)
    texts = [_long_text(rng, "good"), _long_text(rng, "bad")]
    assert main(["predict", "--model", str(tmp_path / "win"), "--json", *texts]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(x) for x in captured.out.splitlines()]
    assert [x["label"] for x in lines] == ["good", "bad"] and [x["windows"] for x in lines] == [5, 5]
    assert "2 inputs read as 10 windows" in captured.err
    assert main(["predict", "--model", str(tmp_path / "cut"), texts[0]]) == 2
    err = capsys.readouterr().err
    assert "more than the model's maximum of 32" in err and "--windows" in err and err.count("\n") == 1
    assert main(["predict", "--model", str(tmp_path / "cut"), "--stride", "4", texts[0]]) == 0


def test_embed_cli_reports_windows(base, tmp_path, capsys):
    text = _long_text(random.Random(9), n=60)
    assert main(["embed", "--model", str(base), text]) == 2
    assert "--windows" in capsys.readouterr().err
    assert main(["embed", "--model", str(base), "--stride", "8", "--window-pool", "max", text, "a cat"]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(x) for x in captured.out.splitlines()]
    assert [r["windows"] for r in rows] == [3, 1] and "2 inputs read as 4 windows" in captured.err
    want = masklm.load(base).embed([text, "a cat"], windows=WindowSpec(stride=8, pool="max"))
    assert close(np.array([r["embedding"] for r in rows]), want, n=forward_terms(masklm.load(base).config))


def test_tagging_trains_on_windows_with_each_word_labelled_where_it_is(base, tmp_path, capsys):
    from masklm.finetune.data import TaggedSentence
    from masklm.finetune.splits import tagging_split  # lazy: the encoder of training rows, checked directly

    tok = masklm.load(base).tokenizer
    rng = random.Random(10)
    words = [rng.choice(FILLER) for _ in range(60)]
    tags = ["O"] * 60
    words[5], words[40], tags[5], tags[40] = "Anna", "Anna", "B-PER", "B-PER"
    index = {"O": 0, "B-PER": 1, "I-PER": 2}
    split = tagging_split([TaggedSentence(words, tags, "x:1")], index, tok, MAX, WindowSpec(stride=6), "x")
    (lo, hi), spans, first = split.groups[0], split.spans[0], split.firsts[0]
    assert hi - lo == len(spans) == 3 and len(split.rows) == 3
    for row, labels, (a, b) in zip(split.rows, split.targets, spans):
        want = [-100] * len(row)
        for pos, t in zip(first, tags):
            if a <= pos < b:
                want[pos - a + 1] = index[t]
        assert labels == want  # every word the window holds is labelled, at its row position
        assert [tok.id_to_token(row[p]) for p, x in enumerate(labels) if x == 1] in ([], ["Anna"], ["Anna", "Anna"])
    records = [{"tokens": words, "tags": tags}] * 4
    data = tmp_path / "tags.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["finetune", "--model", str(base), "--task", "tagging", "--train", str(data), "--validation",
                 str(data), "--out", str(tmp_path / "tagger"), "--epochs", "1", "--windows", "--stride", "6",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["windows"]["validation"] == {"examples": 4, "windows": 12, "max_per_example": 3}
    assert 0.0 <= result["validation"]["entity_f1"] <= 1.0
