"""Extractive question answering: SQuAD's metrics by hand, the SQuAD readers, the best-span rule by hand,
a synthetic task ("... the code is XYZ ...": "what is the code ?") learnt to high exact match through the
CLI, long contexts read in windows, "no answer", the folder in transformers' AutoModelForQuestionAnswering,
and POST /question-answering on a real server."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import close, forward_terms

import masklm
from masklm.cli import main
from masklm.config import ModelConfig
from masklm.errors import DataError
from masklm.finetune import metrics as M
from masklm.finetune.data import read_qa_file
from masklm.finetune.encode import QAWindows
from masklm.finetune.predict import best_answer
from masklm.modeldir import save_model_dir
from masklm.models import build_model
from masklm.tokenizer import train_tokenizer

FILLER = "the a of cat dog sat ran on under mat tree river house big small red green went to".split()
CODES = "alpha bravo delta echo golf hotel india kilo lima mike oscar papa romeo sierra tango zulu".split()
QUESTION = "what is the code ?"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread


# ---- SQuAD's metrics against hand-computed values ------------------------------------------------------

def test_squad_metrics_by_hand():
    assert M.normalize_answer("The  Cat, sat!  ") == "cat sat"
    assert M.normalize_answer("an apple a day") == "apple day"
    assert M.normalize_answer("theory") == "theory"  # only whole articles go
    assert M.exact_match("the Eiffel Tower.", "Eiffel tower") == 1.0
    assert M.exact_match("Eiffel", "Eiffel Tower") == 0.0
    # "big cat" vs "cat": 1 word in common, precision 1/2, recall 1 -> F1 2/3
    assert M.answer_f1("the big cat", "a cat") == pytest.approx(2 / 3)
    # "cat cat dog" vs "cat dog dog": common cat x1 + dog x1 = 2, precision 2/3, recall 2/3 -> 2/3
    assert M.answer_f1("cat cat dog", "cat dog dog") == pytest.approx(2 / 3)
    assert M.answer_f1("", "") == 1.0 and M.answer_f1("cat", "") == 0.0 and M.answer_f1("a", "cat") == 0.0
    # per question the best gold answer counts; no gold answers means the answer "" (v2.0)
    scores = M.qa_metrics([["a cat", "the big cat"], ["dog"], []], ["big cat", "red dog house", ""])
    # q1: EM 1 (matches "the big cat"), F1 1; q2: EM 0, F1 2*(1/3)*1/(4/3) = 1/2; q3: EM 1, F1 1
    assert scores["exact_match"] == pytest.approx(2 / 3) and scores["f1"] == pytest.approx((1 + 0.5 + 1) / 3)


# ---- the readers ------------------------------------------------------------------------------------------

def test_jsonl_and_squad_json_read_alike(tmp_path, capsys):
    context = "Paris is the capital of France."
    rows = [{"id": "q1", "question": "What is the capital?", "context": context,
             "answers": {"text": ["Paris"], "answer_start": [0]}},
            {"id": "q2", "question": "What is the river?", "context": context,
             "answers": {"text": [], "answer_start": []}}]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    squad = tmp_path / "d.json"
    squad.write_text(json.dumps({"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "q1", "question": "What is the capital?", "answers": [{"text": "Paris", "answer_start": 0}]},
        {"id": "q2", "question": "What is the river?", "answers": [], "is_impossible": True}]}]}]}))
    a, b = read_qa_file(jsonl), read_qa_file(squad)
    assert [(e.id, e.question, e.context, e.answers) for e in a] == [(e.id, e.question, e.context, e.answers) for e in b]
    assert a[0].answers == [("Paris", 0)] and a[1].answers == []
    assert b[1].where == f"{squad}: data[0].paragraphs[0].qas[1]"

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**rows[0], "answers": {"text": ["Paris"], "answer_start": [3]}}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: answer 'Paris' is not at answer_start 3"):
        read_qa_file(bad)
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"question": "q", "context": "c"}) + "\n")
    with pytest.raises(DataError, match=r"missing.jsonl:1: no 'answers'"):
        read_qa_file(missing)
    assert read_qa_file(missing, labelled=False)[0].answers == []


# ---- the best span, by hand --------------------------------------------------------------------------------

def test_best_span_rule_by_hand():
    # one window: [CLS] q [SEP] c0 c1 c2 [SEP]; context tokens at rows 3..5, characters "ab cd ef"
    qa = QAWindows(rows=[[0] * 7], spans=[(0, 3)], offsets=[(0, 2), (3, 5), (6, 8)], first=3)
    start = torch.tensor([1.0, 0, 0, 0.5, 3.0, 0.0, 0])
    end = torch.tensor([1.0, 0, 0, 4.0, 0.0, 2.0, 0])
    logits = [torch.stack([start, end], -1)]
    # spans (i <= j): (c0,c0) 4.5, (c0,c2) 2.5, (c1,c1) 3, (c1,c2) 5, (c2,c2) 2: the best is c1..c2 = "cd ef"
    got = best_answer(logits, qa, "ab cd ef", max_answer_length=30, null_threshold=None)
    assert (got["answer"], got["start"], got["end"]) == ("cd ef", 3, 8)
    probs = torch.stack([start[[0, 3, 4, 5]], end[[0, 3, 4, 5]]], -1).softmax(0)  # over [CLS] and the context
    assert got["score"] == pytest.approx(float(probs[2, 0] * probs[3, 1]))
    # at most one token: (c0,c0) 4.5 beats (c1,c1) 3
    assert best_answer(logits, qa, "ab cd ef", 1, None)["answer"] == "ab"
    # the null score [CLS]+[CLS] = 2 is below 5: a span, unless the threshold lets "no answer" win
    assert best_answer(logits, qa, "ab cd ef", 30, 0.0)["answer"] == "cd ef"
    null = torch.stack([start + torch.tensor([5.0, 0, 0, 0, 0, 0, 0]), end], -1)  # null 7 > 5
    assert best_answer([null], qa, "ab cd ef", 30, 0.0) == pytest.approx(
        {"answer": "", "score": best_answer([null], qa, "ab cd ef", 30, 0.0)["score"], "start": 0, "end": 0})
    assert best_answer([null], qa, "ab cd ef", 30, 2.5)["answer"] == "cd ef"  # 7 - 5 = 2 is not > 2.5
    assert best_answer([null], qa, "ab cd ef", 30, None)["answer"] == "cd ef"


# ---- the synthetic task, through the CLI -------------------------------------------------------------------

def _example(rng: random.Random, answerable: bool = True, words: tuple[int, int] = (2, 30)) -> dict:
    before = " ".join(rng.choice(FILLER) for _ in range(rng.randint(*words)))
    after = " ".join(rng.choice(FILLER) for _ in range(rng.randint(*words)))
    if not answerable:
        return {"question": QUESTION, "context": f"{before} . {after} .", "answers": {"text": [], "answer_start": []}}
    code = rng.choice(CODES)
    context = f"{before} . the code is {code} . {after} ."
    return {"question": QUESTION, "context": context,
            "answers": {"text": [code], "answer_start": [context.index(" the code is ") + len(" the code is ")]}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("qa")
    rng = random.Random(0)
    docs = [" ".join(rng.choice(FILLER + CODES + ["code", "is", "what", "?", "."]) for _ in range(20))
            for _ in range(300)]
    tok = train_tokenizer(docs, kind="wordpiece", vocab_size=150, min_frequency=1)
    torch.manual_seed(0)
    config = ModelConfig(arch="bert", vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=32,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    save_model_dir(root / "base", build_model(config), tok)
    for name, n in (("train", 300), ("valid", 60)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(_example(rng, rng.random() > 0.2)) + "\n"
                                                    for _ in range(n)))
    return root


@pytest.fixture(scope="module")
def finetuned(trained) -> dict:
    """``masklm finetune --task question-answering`` as typed -> its --json summary (the folder: qa/)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["finetune", "--model", str(trained / "base"), "--task", "question-answering", "--train",
                     str(trained / "train.jsonl"), "--validation", str(trained / "valid.jsonl"), "--out",
                     str(trained / "qa"), "--epochs", "2", "--lr", "3e-3", "--batch-size", "16", "--json"])
    assert code == 0
    return json.loads(out.getvalue())


def test_question_answering_learns_and_answers(trained, finetuned, capsys):
    root, result = trained, finetuned
    assert result["validation"]["exact_match"] >= 0.9 and result["validation"]["f1"] >= 0.9
    assert result["windows"]["train"]["max_per_example"] >= 3  # contexts up to ~66 tokens, windows of 24
    task = json.loads((root / "qa" / "config.json").read_text())["task"]
    assert task["type"] == "question-answering" and task["max_answer_length"] == 30
    assert task["null_threshold"] == 0.0  # the training file has unanswerable questions (v2.0)

    rng = random.Random(11)
    cases = [_example(rng, words=(25, 40)) for _ in range(20)]  # 2-4 windows each
    answers = masklm.load(root / "qa").answer(cases)
    right = [a["answer"] == c["answers"]["text"][0] for a, c in zip(answers, cases)]
    assert sum(right) >= 18
    assert all(c["context"][a["start"]:a["end"]] == a["answer"] and 0 < a["score"] <= 1
               for a, c in zip(answers, cases))
    none = masklm.load(root / "qa").answer({"question": QUESTION, "context": _example(rng, False)["context"]})
    assert none["answer"] == "" and none["start"] == none["end"] == 0

    context = cases[0]["context"]
    assert main(["predict", "--model", str(root / "qa"), "--json", "--question", QUESTION, "--context", context]) == 0
    captured = capsys.readouterr()
    line = json.loads(captured.out)
    assert line["answer"] == answers[0]["answer"] and line["windows"] >= 2 and line["question"] == QUESTION
    assert "1 input read as" in captured.err
    (root / "ask.jsonl").write_text("".join(json.dumps({"question": QUESTION, "context": c["context"]}) + "\n"
                                            for c in cases[:3]))
    assert main(["predict", "--model", str(root / "qa"), "--input", str(root / "ask.jsonl")]) == 0
    assert [x.split("\t")[0] for x in capsys.readouterr().out.splitlines()] == [a["answer"] for a in answers[:3]]
    assert main(["predict", "--model", str(root / "qa"), "some text"]) == 2
    assert "--question Q --context C" in capsys.readouterr().err
    assert main(["eval", "test", "--model", str(root / "qa"), "--data", str(root / "valid.jsonl"), "--json"]) == 0
    tested = json.loads(capsys.readouterr().out)  # the validation file: the best epoch's exact match and F1
    assert (tested["exact_match"], tested["f1"]) == (result["validation"]["exact_match"], result["validation"]["f1"])


def test_bad_qa_input_is_one_line(trained, capsys):
    bad = trained / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "context": "the code is kilo", "answers": {"text": ["kilo"],
                                                                                         "answer_start": [2]}}) + "\n")
    code = main(["finetune", "--model", str(trained / "base"), "--task", "question-answering", "--train", str(bad),
                 "--validation", str(bad), "--out", str(trained / "never")])
    err = capsys.readouterr().err
    assert code == 2 and "bad.jsonl:1: answer 'kilo' is not at answer_start 2" in err and err.count("\n") == 1
    assert not (trained / "never").exists()
    code = main(["finetune", "--model", str(trained / "base"), "--task", "question-answering", "--train",
                 str(trained / "train.jsonl"), "--validation", str(trained / "valid.jsonl"), "--out",
                 str(trained / "never"), "--null-threshold", "nan"])  # NaN would be stored as invalid JSON
    err = capsys.readouterr().err
    assert code == 2 and "--null-threshold must be a number" in err and not (trained / "never").exists()
    code = main(["finetune", "--model", str(trained / "base"), "--task", "question-answering", "--train",
                 str(trained / "train.jsonl"), "--validation", str(trained / "valid.jsonl"), "--out",
                 str(trained / "never-empty"), "--epochs", "1", "--null-threshold", "inf"])
    text = (trained / "never-empty" / "config.json").read_text()  # inf: never answer '', stored as JSON can
    assert code == 0 and json.loads(text)["task"]["null_threshold"] is None and "Infinity" not in text


def test_predict_refuses_a_nan_null_threshold(trained, finetuned, capsys):
    code = main(["predict", "--model", str(trained / "qa"), "--question", QUESTION, "--context", "the code is kilo",
                 "--null-threshold", "nan"])
    err = capsys.readouterr().err
    assert code == 2 and "null_threshold must be a number" in err and err.count("\n") == 1


# ---- transformers: the exported folder is an AutoModelForQuestionAnswering -----------------------------

def test_export_loads_as_auto_model_for_question_answering(trained, finetuned, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    folder = trained / "qa"
    assert main(["export-hf", "--model", str(folder), "--out", str(tmp_path / "hf")]) == 0
    capsys.readouterr()
    hf = transformers.AutoModelForQuestionAnswering.from_pretrained(str(tmp_path / "hf")).eval()
    assert type(hf).__name__ == "BertForQuestionAnswering"
    pipe = masklm.load(folder)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    contexts = ["the code is kilo .", "a cat . the code is echo"]
    enc = hf_tok([QUESTION] * 2, contexts, padding=True, return_tensors="pt")
    assert enc["input_ids"][1, :enc["attention_mask"][1].sum()].tolist() == \
        pipe.tokenizer.backend.encode(QUESTION, contexts[1]).ids
    # BERT's tokenizers mark the context as segment 1; masklm reads one segment, and the export makes
    # every segment read alike, so HF's logits match with or without token_type_ids
    types = [pipe.tokenizer.backend.encode(QUESTION, c).type_ids for c in contexts]
    enc["token_type_ids"] = torch.tensor([t + [0] * (enc["input_ids"].shape[1] - len(t)) for t in types])
    assert enc["token_type_ids"].max() == 1
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        ours = pipe.model(ids, mask)  # [B, T, 2]
        theirs = hf(**enc)
    keep = mask.bool()
    n = forward_terms(pipe.config, ids.shape[1])
    assert close(theirs.start_logits[keep], ours[..., 0][keep], n=n)
    assert close(theirs.end_logits[keep], ours[..., 1][keep], n=n)


# ---- the server: POST /question-answering --------------------------------------------------------------------

@pytest.mark.slow
def test_question_answering_route(trained, finetuned, tmp_path):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from test_serve import Server  # noqa: I001 - the serve tests' helper: a real `masklm serve` process

    pipe = masklm.load(trained / "qa")
    rng = random.Random(12)
    cases = [_example(rng, words=(25, 40)) for _ in range(3)]
    server = Server(trained / "qa", tmp_path / "serve.log", "--max-inputs", "2", "--max-batch-tokens", "80",
                    "--max-tokens", "24").wait()
    try:
        post = lambda body: httpx.post(server.url + "/question-answering", json=body, timeout=30)  # noqa: E731
        one = post({"question": QUESTION, "context": cases[0]["context"]})
        assert one.status_code == 200, one.text
        want = pipe.answer({"question": QUESTION, "context": cases[0]["context"]}, max_length=24)
        got = one.json()
        assert set(got) == {"score", "start", "end", "answer"} and got["answer"] == want["answer"]
        assert (got["start"], got["end"]) == (want["start"], want["end"])
        assert got["score"] == pytest.approx(want["score"], abs=1e-6)
        two = post({"question": QUESTION, "context": [c["context"] for c in cases[1:]]})  # one question, 2 contexts
        assert [a["answer"] for a in two.json()] == [a["answer"] for a in pipe.answer(
            [{"question": QUESTION, "context": c["context"]} for c in cases[1:]], max_length=24)]
        assert post({"question": [QUESTION] * 3, "context": [c["context"] for c in cases]}).status_code == 413
        long = post({"question": QUESTION, "context": " ".join(["the cat"] * 50)})  # > 80 tokens
        assert long.status_code == 413 and "max-batch-tokens" in long.json()["error"]
        assert post({"question": QUESTION, "context": "x", "top_k": 2}).status_code == 422  # unknown field
        assert post({"question": [QUESTION, QUESTION], "context": ["a", "b", "c"]}).status_code == 422
        assert post({"question": QUESTION, "context": "the code is kilo .", "max_answer_len": 0}).status_code == 422
        assert post({"question": QUESTION, "context": cases[0]["context"]}).json() == got  # still serving
    finally:
        server.stop()
