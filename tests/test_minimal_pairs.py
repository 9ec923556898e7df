"""Minimal-pair evaluation: reading BLiMP JSONL, the strict rule, ties, tallies, CLI, JSON and plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import approx

import masklm
from masklm.cli import main
from masklm.config import ModelConfig
from masklm.errors import DataError
from masklm.modeldir import save_model_dir
from masklm.models import build_model
from masklm.scoring import evaluate, read_pairs
from masklm.scoring.minimal_pairs import shipped_data
from masklm.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    pairs = read_pairs(None)
    texts = [s for p in pairs for s in (p.good, p.bad)]
    tokenizer = train_tokenizer(texts * 3, kind="wordpiece", vocab_size=150, min_frequency=1)
    torch.manual_seed(3)
    model = build_model(ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    with torch.no_grad():  # peaked (non-uniform) predictions so that good and bad sentences differ
        for p in model.parameters():
            p.normal_(0.0, 0.4)
    return save_model_dir(tmp_path_factory.mktemp("mp") / "model", model, tokenizer)


@pytest.fixture(scope="module")
def pipe(model_dir):
    return masklm.load(model_dir)


def test_shipped_set():
    files = shipped_data()
    assert [f.name for f in files] == ["anaphor_agreement.jsonl", "determiner_noun_agreement.jsonl",
                                       "subject_verb_agreement.jsonl"]
    pairs = read_pairs(None)
    assert len(pairs) == 30
    assert {p.uid for p in pairs} == {f.stem for f in files}
    assert all(p.field == "morphology" and p.good != p.bad for p in pairs)


def manual(pipe, pairs, metric="pll", reduction="sum"):
    """Accuracy by hand: score each sentence alone, correct iff good > bad."""
    correct = {}
    for p in pairs:
        good = pipe.score(p.good, metric=metric, reduction=reduction)
        bad = pipe.score(p.bad, metric=metric, reduction=reduction)
        correct.setdefault(p.uid, []).append(good > bad)
    return correct


@pytest.mark.parametrize("metric,reduction", [("pll", "sum"), ("pll-word-l2r", "mean"), ("mntp", "sum")])
def test_accuracy_matches_a_manual_count(pipe, metric, reduction):
    pairs = read_pairs(None)
    result = evaluate(pipe, pairs, metric=metric, reduction=reduction)
    want = manual(pipe, pairs, metric, reduction)
    assert result["metric"] == metric and result["reduction"] == reduction
    assert "strictly higher" in result["rule"] and metric in result["rule"]
    total = sum(sum(v) for v in want.values())
    assert result["correct"] == total and result["pairs"] == 30
    assert result["accuracy"] == approx(total / 30, dtype=float)  # counts divided in Python floats
    for uid, marks in want.items():
        got = result["by_paradigm"][uid]
        assert got["correct"] == sum(marks) and got["pairs"] == 10
        assert got["accuracy"] == approx(sum(marks) / 10, dtype=float)
        assert got["linguistics_term"] == uid
    macro = sum(sum(m) / 10 for m in want.values()) / 3
    assert result["macro_accuracy"] == approx(macro, dtype=float, n=3)
    assert result["by_field"] == {"morphology": {"pairs": 30, "correct": total, "ties": 0,
                                                 "accuracy": approx(total / 30, dtype=float)}}


def test_ties_count_as_wrong_and_uid_from_file_name(pipe, tmp_path):
    # BabyLM supplement style: only the two sentences; the paradigm is the file name
    data = tmp_path / "my_paradigm.jsonl"
    rows = [{"sentence_good": "The dog runs.", "sentence_bad": "The dog runs."},  # identical -> a tie
            {"sentence_good": "The dog runs.", "sentence_bad": "The dog run."}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"sentence_good": "He read these books.", "sentence_bad": "He read this books.",
                                 "UID": "det", "field": "syntax"}) + "\n")
    pairs = read_pairs([tmp_path])  # a folder means its .jsonl files
    assert [p.uid for p in pairs] == ["my_paradigm", "my_paradigm", "det"]  # files in sorted order
    result = evaluate(pipe, pairs, details=True)
    mine = result["by_paradigm"]["my_paradigm"]
    assert mine["ties"] == 1 and mine["pairs"] == 2
    second = pipe.score("The dog runs.") > pipe.score("The dog run.")
    assert mine["correct"] == int(second)  # the tie is not counted as correct
    assert result["ties"] == 1
    assert list(result["by_field"]) == ["syntax"]  # records without a field are in no field
    assert result["details"][0]["tie"] and not result["details"][0]["correct"]


def test_malformed_files(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"sentence_good": "a", "sentence_bad": "b"}) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        read_pairs([bad])
    bad.write_text(json.dumps({"sentence_good": "a"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: 'sentence_bad' is missing"):
        read_pairs([bad])
    bad.write_text("[1, 2]\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: expected a JSON object"):
        read_pairs([bad])
    bad.write_text("\n")
    with pytest.raises(DataError, match="holds no pairs"):
        read_pairs([bad])
    with pytest.raises(DataError, match="does not exist"):
        read_pairs([tmp_path / "nope.jsonl"])


def test_cli(model_dir, pipe, tmp_path, capsys):
    shipped = read_pairs(None)
    assert main(["eval", "minimal-pairs", "--model", str(model_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    want = evaluate(pipe, read_pairs(None))
    assert out["accuracy"] == approx(want["accuracy"], dtype=float) and out["metric"] == "pll"
    assert set(out["by_paradigm"]) == {"anaphor_agreement", "determiner_noun_agreement", "subject_verb_agreement"}

    png = tmp_path / "plots" / "mp.png"
    data = [str(p) for p in shipped_data()[:2]]
    assert main(["eval", "minimal-pairs", "--model", str(model_dir), "--data", *data,
                 "--metric", "pll-word-l2r", "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "rule: each sentence scored by summed pll-word-l2r" in text and "ties count as wrong" in text
    want = evaluate(pipe, read_pairs(data), metric="pll-word-l2r")
    assert f"overall: {100 * want['accuracy']:.1f}% ({want['correct']}/20 pairs, 0 ties)" in text
    assert "anaphor_agreement" in text and "subject_verb_agreement" not in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert not list(png.parent.glob("*.tmp"))

    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"sentence_good": "x", "sentence_bad": "y"}\n{"sentence_good": 3}\n')
    assert main(["eval", "minimal-pairs", "--model", str(model_dir), "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "broken.jsonl:2" in err and "Traceback" not in err
    assert main(["eval", "minimal-pairs", "--model", str(model_dir), "--plot", "x.pdf"]) == 2
    assert ".png" in capsys.readouterr().err

    odd = tmp_path / "odd.jsonl"  # digits the tokenizer lacks: [UNK], not scored, so the pair ties; said
    odd.write_text(json.dumps({"sentence_good": "He paid 5 coins.", "sentence_bad": "He paid 7 coins.",
                               "field": "numbers"}) + "\n" +
                   json.dumps({"sentence_good": shipped[0].good, "sentence_bad": shipped[0].bad}) + "\n")
    assert main(["eval", "minimal-pairs", "--model", str(model_dir), "--data", str(odd)]) == 0
    text = capsys.readouterr().out
    assert "1 pair holds [UNK] tokens" in text and "(1 pair without a field: in no row above)" in text
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"sentence_good": "a", "sentence_bad": "b"}) + "\n" +
                    json.dumps({"sentence_good": "a", "sentence_bad": " ".join(["the"] * 600)}) + "\n")
    assert main(["eval", "minimal-pairs", "--model", str(model_dir), "--data", str(long)]) == 2
    assert f"{long}:2: sentence_bad is 602 tokens long, more than the model's maximum" in capsys.readouterr().err
    long.write_text(json.dumps({"sentence_good": "a", "sentence_bad": "b"}) + "\n" +
                    json.dumps({"sentence_good": "中文", "sentence_bad": "b"}) + "\n")
    assert main(["eval", "minimal-pairs", "--model", str(model_dir), "--data", str(long)]) == 2
    assert f"{long}:2: sentence_good '中文' is all [UNK] to this tokenizer" in capsys.readouterr().err
