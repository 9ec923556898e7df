"""Fine-tuning: hand-checked metrics, three synthetic tasks that must be learned (classification
accuracy >= 0.95, regression Pearson >= 0.93, tagging entity F1 >= 0.9, all on validation), the saved
folder through masklm.load / classify / tag / predict, and the bad-input errors (exit 2)."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest
import torch
from conftest import approx, close, forward_terms

import masklm
from masklm.cli import main
from masklm.config import ModelConfig
from masklm.errors import DataError, InputError
from masklm.finetune import FinetuneArgs, build_finetuned, finetune
from masklm.finetune import metrics as M
from masklm.modeldir import save_model_dir
from masklm.models import build_model
from masklm.tokenizer import train_tokenizer

FILLER = "the a of cat dog sat ran on under mat tree river house big small red green went to".split()
FIRST, LAST = ["Anna", "Boris", "Clara", "David", "Elena"], ["Smith", "Jones", "Novak", "Berg"]


def _sentence(rng: random.Random, extra: list[str]) -> list[str]:
    words = [rng.choice(FILLER) for _ in range(rng.randint(3, 7))]
    for w in extra:
        words.insert(rng.randint(0, len(words)), w)
    return words


def _base(root: Path, arch: str) -> Path:
    rng = random.Random(0)
    docs = [" ".join(_sentence(rng, ["good", "bad", *FIRST, *LAST])) for _ in range(100)]
    tok = train_tokenizer(docs, kind="wordpiece", vocab_size=90, min_frequency=1)
    torch.manual_seed(0)
    config = ModelConfig(arch=arch, vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=40)
    return save_model_dir(root / f"base-{arch}", build_model(config), tok)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ft")


@pytest.fixture(scope="module")
def base(root) -> Path:
    return _base(root, "bert")


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ---- metrics against hand-computed values ----------------------------------------------------------

def test_classification_metrics_by_hand():
    gold, pred = ["a", "a", "a", "b", "b", "c"], ["a", "a", "b", "b", "c", "c"]
    assert M.accuracy(gold, pred) == approx(4 / 6, dtype=float, n=6)  # numpy float64 throughout
    # per class F1: a 2*2/(4+0+1)=0.8, b 2*1/(2+1+1)=0.5, c 2*1/(2+1+0)=2/3
    assert M.macro_f1(gold, pred) == approx((0.8 + 0.5 + 2 / 3) / 3, dtype=float, n=6)
    # binary MCC = (tp*tn - fp*fn) / sqrt(...): tp=2 tn=1 fp=1 fn=1 -> (2-1)/sqrt(3*3*2*2) = 1/6
    assert M.mcc([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == approx(1 / 6, dtype=float, n=5)
    # multiclass R_K: C=[[2,1,0],[0,1,1],[0,0,1]], c=4 s=6 t=(3,2,1) p=(2,2,2):
    # (4*6 - 12) / sqrt((36-12)(36-14)) = 12 / sqrt(528)
    assert M.mcc(gold, pred) == approx(12 / math.sqrt(528), dtype=float, n=6)
    assert M.mcc([0, 0, 0], [0, 0, 0]) == 0.0  # undefined (0 / 0): the constant 0


def test_correlations_by_hand():
    x, y = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]
    # means 2.5; dx=(-1.5,-.5,.5,1.5) dy=(-1.5,.5,-.5,1.5): sum dxdy=2.25-.25-.25+2.25=4, sum dx2=5
    assert M.pearson(x, y) == approx(4 / 5, dtype=float, n=4)
    assert M.spearman([10, 20, 30, 40], [1, 100, 50, 1000]) == approx(4 / 5, dtype=float, n=4)
    assert list(M.rankdata([3, 1, 3, 2])) == [3.5, 1.0, 3.5, 2.0]
    assert M.pearson([1, 1, 1], [1, 2, 3]) == 0.0  # undefined (constant input): the constant 0


def test_bio_spans_and_entity_f1_by_hand():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-PER", "B-PER", "I-ORG"]
    assert M.bio_spans(tags) == [("PER", 0, 2), ("LOC", 3, 5), ("PER", 5, 6), ("PER", 6, 7), ("ORG", 7, 8)]
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "I-ORG"]]  # 1 of 3 gold found; 1 of 2 predicted right
    s = M.entity_scores(gold, pred)
    assert s["entity_precision"] == approx(1 / 2, dtype=float)
    assert s["entity_recall"] == approx(1 / 3, dtype=float)
    assert s["entity_f1"] == approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3), dtype=float, n=3)


# ---- the task model: the pretrained encoder under its own names, plus a head --------------------------

@pytest.mark.parametrize("arch,mlm_head", [("bert", "cls."), ("gpt-bert", "classifier.")])
def test_head_attaches_to_the_encoder_by_name(arch, mlm_head):
    torch.manual_seed(0)
    base = build_model(ModelConfig(arch=arch, vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=64, max_position_embeddings=40))
    model = build_finetuned(base, {"type": "classification", "labels": ["a", "b"], "num_labels": 2})
    base_state, state = base.state_dict(), model.state_dict()
    encoder = [k for k in base_state if not k.startswith(mlm_head)]
    assert sorted(state) == sorted(encoder + ["head.dense.bias", "head.dense.weight", "head.out.bias",
                                              "head.out.weight"])
    assert all(state[k].data_ptr() == base_state[k].data_ptr() for k in encoder)  # shared, not copied
    ids = torch.randint(5, 50, (2, 7))
    assert torch.equal(model.eval().encode(ids), base.eval().encode(ids))
    assert model(ids).shape == (2, 2)
    again = build_finetuned(model, {"type": "tagging", "labels": ["O", "B-X"], "num_labels": 2})
    assert sorted(again.state_dict()) == sorted(encoder + ["head.out.bias", "head.out.weight"])


# ---- classification: through the CLI, then the saved folder ------------------------------------------

def _classification_data(root: Path) -> tuple[Path, Path]:
    rng = random.Random(1)
    files = []
    for name, n in (("train", 240), ("valid", 80)):
        rows = ["sentence,label"]
        for _ in range(n):
            label = rng.choice(["pos", "neg"])
            rows.append(f"{' '.join(_sentence(rng, ['good' if label == 'pos' else 'bad']))},{label}")
        files.append(root / f"cls-{name}.csv")
        files[-1].write_text("\n".join(rows) + "\n")
    return files[0], files[1]


def test_classification_learns_and_serves(root, base, capsys):
    train, valid = _classification_data(root)
    out = root / "cls"
    code = main(["finetune", "--model", str(base), "--task", "classification", "--train", str(train),
                 "--validation", str(valid), "--text-column", "sentence", "--out", str(out), "--epochs", "6",
                 "--lr", "3e-3", "--batch-size", "16", "--patience", "3", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["validation"]["accuracy"] >= 0.95  # the bar: sentences with "good" vs "bad"
    config = json.loads((out / "config.json").read_text())
    assert config["task"]["type"] == "classification" and config["task"]["labels"] == ["neg", "pos"]

    pipe = masklm.load(out)
    got = pipe.classify(["the good cat sat", "a bad dog ran on the mat"])
    assert [g["label"] for g in got] == ["pos", "neg"] and all(0.5 < g["score"] <= 1 for g in got)
    ranked = pipe.classify("the good cat", top_k=None)
    assert [r["label"] for r in ranked][0] == "pos" and sum(r["score"] for r in ranked) == approx(1.0, n=2)
    assert pipe.embed("the cat").shape == (32,)  # the encoder still embeds
    again = masklm.load(pipe.save(root / "resaved")).classify("the good cat sat")  # round-trips
    # one text alone vs in a batch of two: the same up to float summation order
    n = forward_terms(pipe.config)
    assert again["label"] == got[0]["label"] and again["score"] == approx(got[0]["score"], scale=1.0, n=n)
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModel.from_pretrained(str(out))  # the BERT encoder loads in transformers
    ids = torch.tensor([pipe.tokenizer.encode("the good cat").ids])
    with torch.no_grad():
        assert close(hf(ids).last_hidden_state, pipe.model.encode(ids), n=n)
    with pytest.raises(InputError, match="fine-tuned classification"):
        pipe.fill_mask("the [MASK] sat")
    with pytest.raises(InputError, match="tag"):
        pipe.tag("the good cat")

    assert main(["predict", "--model", str(out), "--json", "the good tree", "the bad tree"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["label"] for x in lines] == ["pos", "neg"] and lines[0]["text"] == "the good tree"
    assert main(["predict", "--model", str(out), "--input", str(valid)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 80
    renamed = root / "renamed.csv"  # the same rows under another header: the error's advice works
    renamed.write_text(valid.read_text().replace("sentence,label", "text,label", 1))
    assert main(["predict", "--model", str(out), "--input", str(renamed)]) == 2
    assert "no column 'sentence'" in capsys.readouterr().err
    assert main(["predict", "--model", str(out), "--input", str(renamed), "--text-column", "text"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 80
    assert main(["predict", "--model", str(out), "--input", str(renamed), "--text-pair-column", "label"]) == 2
    assert "fine-tuned on single texts; leave it out" in capsys.readouterr().err
    assert main(["predict", "--model", str(base), "x"]) == 2  # not fine-tuned
    assert "not a fine-tuned model" in capsys.readouterr().err
    # a labelled test file: the validation file gives the metrics finetune reported for the best epoch
    assert main(["eval", "test", "--model", str(out), "--data", str(valid), "--json"]) == 0
    captured = capsys.readouterr()
    tested = json.loads(captured.out)
    assert tested["accuracy"] == result["validation"]["accuracy"] and tested["examples"] == 80
    assert tested["macro_f1"] == approx(result["validation"]["macro_f1"], dtype=float)
    assert f"80 examples in {valid}" in captured.err
    assert main(["eval", "test", "--model", str(out), "--data", str(renamed), "--text-column", "text"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"accuracy\t{result['validation']['accuracy']:.4f}"
    other = root / "other-labels.csv"
    other.write_text("sentence,label\nthe good cat,pos\nthe odd cat,meh\n")
    assert main(["eval", "test", "--model", str(out), "--data", str(other)]) == 2
    assert "other-labels.csv:3: label 'meh' is not one" in capsys.readouterr().err
    assert main(["eval", "test", "--model", str(base), "--data", str(valid)]) == 2
    assert "not a fine-tuned model" in capsys.readouterr().err
    for strategy in ([], ["--strategy", "threshold"], ["--strategy", "autoregressive"]):  # no LM head: one line
        assert main(["generate", "--model", str(out), "the cat", "--length", "4", *strategy]) == 2
        err = capsys.readouterr().err
        assert "fine-tuned classification model: it has no masked-LM head" in err and err.count("\n") == 1, err


@pytest.fixture(scope="module")
def classification_fp32(root, base) -> dict:
    """The fp32 fine-tuning run the mixed-precision runs are compared with (once for the module)."""
    train, valid = _classification_data(root)
    return finetune(base, FinetuneArgs(task="classification", train=str(train), validation=str(valid),
                                       out=str(root / "cls-fp32"), text_column="sentence", epochs=6, lr=3e-3,
                                       batch_size=16, patience=3), log=None)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_classification_learns_in_mixed_precision(root, base, capsys, classification_fp32, precision):
    """``--precision`` as in ``masklm train``: autocast over fp32 weights (fp16 with its loss scaler); the run
    learns the task, its first epoch's loss is fp32's to within rounding but not equal (autocast ran), and it
    keeps fp32 weights and records the precision."""
    train, valid = _classification_data(root)
    out = root / f"cls-{precision}"
    code = main(["finetune", "--model", str(base), "--task", "classification", "--train", str(train),
                 "--validation", str(valid), "--text-column", "sentence", "--out", str(out), "--epochs", "6",
                 "--lr", "3e-3", "--batch-size", "16", "--patience", "3", "--precision", precision, "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["validation"]["accuracy"] >= 0.95
    first, first32 = result["history"][0]["loss"], classification_fp32["history"][0]["loss"]
    assert first != first32 and abs(first - first32) < 0.05 * first32
    assert json.loads((out / "training_args.json").read_text())["finetune"]["precision"] == precision
    assert all(t.dtype == torch.float32 for t in masklm.load(out).model.state_dict().values() if t.is_floating_point())


def test_precision_flag_is_checked_in_one_line(root, base, capsys):
    train, _ = _classification_data(root)
    err = _cli_error(capsys, base, root, "classification", train, None, "--text-column", "sentence",
                     "--precision", "fp8")
    assert "precision must be one of fp32, bf16, fp16, got 'fp8'" in err


# ---- regression on an LTG-style encoder (gpt-bert) -----------------------------------------------------

def test_regression_learns_on_gpt_bert(root, capsys):
    base = _base(root, "gpt-bert")
    rng = random.Random(2)
    files = []
    for name, n in (("train", 240), ("valid", 80)):
        records = []
        for _ in range(n):
            k = rng.randint(0, 3)
            records.append({"a": " ".join(_sentence(rng, ["good"] * k)), "score": 1.5 * k - 1})
        files.append(_write_jsonl(root / f"reg-{name}.jsonl", records))
    result = finetune(base, FinetuneArgs(task="regression", train=str(files[0]), validation=str(files[1]),
                                         out=str(root / "reg"), text_column="a", label_column="score",
                                         epochs=6, lr=3e-3, batch_size=16), log=None)
    assert result["validation"]["pearson"] >= 0.93  # the bar: target = 1.5 * (number of "good") - 1
    pipe = masklm.load(root / "reg")
    values = [v["value"] for v in pipe.classify(["the cat sat on the mat", "good good good cat"])]
    assert values[0] < 0.5 < 2.0 < values[1]  # back in the targets' scale (-1 and 3.5)
    assert main(["eval", "test", "--model", str(root / "reg"), "--data", str(files[1]), "--json"]) == 0
    tested = json.loads(capsys.readouterr().out)  # the validation file: the best epoch's correlations
    # batches of 32 here, 16 in fine-tuning: the same values up to float32 summation order
    assert tested["pearson"] == approx(result["validation"]["pearson"], n=80) and tested["examples"] == 80


# ---- tagging: CoNLL in, entities out -----------------------------------------------------------------

def _tagged(rng: random.Random) -> tuple[list[str], list[str]]:
    words = [rng.choice(FILLER) for _ in range(rng.randint(3, 7))]
    tags = ["O"] * len(words)
    for _ in range(rng.randint(1, 2)):
        name = [rng.choice(FIRST)] + ([rng.choice(LAST)] if rng.random() < 0.6 else [])
        at = rng.randint(0, len(words))
        words[at:at] = name
        tags[at:at] = ["B-PER"] + ["I-PER"] * (len(name) - 1)
    return words, tags


def test_tagging_learns_and_serves(root, base, capsys):
    rng = random.Random(3)
    train = root / "tag-train.conll"
    train.write_text("-DOCSTART-\tO\n\n" + "\n\n".join(
        "\n".join(f"{w}\t{t}" for w, t in zip(*_tagged(rng))) for _ in range(200)) + "\n")
    valid = _write_jsonl(root / "tag-valid.jsonl",
                         [dict(zip(("tokens", "tags"), _tagged(rng))) for _ in range(60)])
    result = finetune(base, FinetuneArgs(task="tagging", train=str(train), validation=str(valid),
                                         out=str(root / "tag"), epochs=8, lr=2e-3, batch_size=16), log=None)
    assert result["validation"]["entity_f1"] >= 0.9  # the bar: capitalised names tagged B-PER / I-PER
    pipe = masklm.load(root / "tag")
    text = "the cat saw Clara Novak  under a tree"
    entities = pipe.tag(text)
    assert [(e["entity_group"], e["word"]) for e in entities] == [("PER", "Clara Novak")]
    assert text[entities[0]["start"]:entities[0]["end"]] == "Clara Novak"
    words = pipe.tag([["Boris", "ran", "to", "the", "river"]], aggregate=False)[0]
    assert [w["entity"] for w in words] == ["B-PER", "O", "O", "O", "O"]
    with pytest.raises(InputError, match="classify"):
        pipe.classify("Boris ran")
    assert main(["predict", "--model", str(root / "tag"), "Elena Berg went to the house"]) == 0
    assert "PER: Elena Berg" in capsys.readouterr().out
    assert main(["eval", "test", "--model", str(root / "tag"), "--data", str(valid), "--json"]) == 0
    tested = json.loads(capsys.readouterr().out)  # the validation file: the best epoch's entity F1
    assert tested["entity_f1"] == result["validation"]["entity_f1"] and tested["task"] == "tagging"


# ---- bad input: clear one-line errors, exit 2 ----------------------------------------------------------

def _cli_error(capsys, base: Path, root: Path, task: str, train: Path, valid: Path | None = None, *extra: str) -> str:
    code = main(["finetune", "--model", str(base), "--task", task, "--train", str(train),
                 "--validation", str(valid or train), "--out", str(root / "never"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert not (root / "never").exists()
    return err


def test_records_over_several_lines_are_counted_and_reported(root, base, capsys):
    """A quoted field may hold line breaks; a stray quote also joins the rows after it into one text. Either
    way the reader keeps the lines each record took, and finetune and predict say how many records spanned
    several lines and where the first did."""
    from masklm.finetune.data import read_sequence_file

    rows = ['"note one,\nsecond line",a'] + [f"the {w} sat,{'ab'[i % 2]}" for i, w in enumerate(["cat", "dog"])]
    rows += ['"Hold,b', "the cow ran,a", 'the 6" sheep,b'] + [f"the {w} ran,{'ab'[i % 2]}" for i, w in
                                                              enumerate(["hen", "pig", "fox", "owl"])]
    data = root / "quotes.csv"
    data.write_text("text,label\n" + "\n".join(rows) + "\n")
    got = read_sequence_file(data)
    assert [(e.where.rsplit(":", 1)[1], e.lines) for e in got] == [
        ("2-3", 2), ("4", 1), ("5", 1), ("6-8", 3), ("9", 1), ("10", 1), ("11", 1), ("12", 1)]
    assert got[0].text == "note one,\nsecond line" and got[3].text == "Hold,b\nthe cow ran,a\nthe 6 sheep"
    out = root / "quotes-model"
    assert main(["finetune", "--model", str(base), "--task", "classification", "--train", str(data),
                 "--validation", str(data), "--out", str(out), "--epochs", "1"]) == 0
    note = f"{data}: 2 of 8 records span several lines (a quoted field with line breaks; the first at lines 2-3)"
    assert note in capsys.readouterr().err
    assert main(["predict", "--model", str(out), "--input", str(data)]) == 0
    captured = capsys.readouterr()
    assert note in captured.err and len(captured.out.splitlines()) == 8 + 3  # two texts hold line breaks


def test_text_the_tokenizer_cannot_spell_is_reported(root, base, capsys):
    """Chinese rows on a base whose vocabulary has no Chinese: finetune says what share of each file's tokens
    are [UNK] (past 1%), naming the file, instead of training on [UNK]s in silence."""
    foreign = _write_jsonl(root / "zh.jsonl", [{"text": "公司 利润 大幅 下降", "label": "neg"},
                                              {"text": "the good cat sat", "label": "pos"}])
    plain = _write_jsonl(root / "en.jsonl", [{"text": "the bad cat sat", "label": "neg"},
                                             {"text": "the good cat sat", "label": "pos"}])
    assert main(["finetune", "--model", str(base), "--task", "classification", "--train", str(foreign),
                 "--validation", str(plain), "--out", str(root / "zh-model"), "--epochs", "1"]) == 0
    err = capsys.readouterr().err
    tok = masklm.load(base).tokenizer
    rows = [tok.encode(text).ids for text in ("公司 利润 大幅 下降", "the good cat sat")]
    unknown, total = sum(r.count(tok.unk_id) for r in rows), sum(map(len, rows))
    assert unknown == 8  # each character of the four Chinese words
    assert f"{foreign}: {unknown / total:.1%} of its {total} tokens are [UNK]" in err
    assert f"{plain}:" not in err


def test_bad_input(root, base, capsys):
    good = _write_jsonl(root / "ok.jsonl", [{"text": "the cat", "label": "a"}, {"text": "the dog", "label": "b"}])
    err = _cli_error(capsys, base, root, "classification", good, None, "--label-column", "gold")
    assert "ok.jsonl:1" in err and "no column 'gold'" in err and "--label-column" in err
    one = _write_jsonl(root / "one.jsonl", [{"text": "the cat", "label": 1}, {"text": "a dog", "label": 1}])
    assert "at least two classes" in _cli_error(capsys, base, root, "classification", one)
    same = _write_jsonl(root / "same.jsonl", [{"text": "the cat", "label": 2}, {"text": "a dog", "label": 2}])
    assert "regression needs varied targets" in _cli_error(capsys, base, root, "regression", same)
    broken = root / "broken.jsonl"
    broken.write_text('{"text": "the cat", "label": "a"}\n{"text": "a dog", "label": \n')
    assert "broken.jsonl:2: not valid JSON" in _cli_error(capsys, base, root, "classification", broken)
    csv = root / "bad.csv"
    csv.write_text("text,label\nthe cat,a\nthe dog,b,extra\n")
    assert "bad.csv:3: 3 fields but the header has 2" in _cli_error(capsys, base, root, "classification", csv)
    for extra in (["--max-answer-length", "5"], ["--null-threshold", "1"]):  # a flag the task never reads
        assert "is for question-answering, not classification; leave it out" in _cli_error(
            capsys, base, root, "classification", good, None, *extra)
    assert "--warmup is the share of the steps" in _cli_error(capsys, base, root, "classification", good, None,
                                                             "--warmup", "2")  # named alone, not with --lr
    assert "--lr must be a finite number > 0, got inf" in _cli_error(capsys, base, root, "classification", good,
                                                                    None, "--lr", "inf")
    tagged = _write_jsonl(root / "tagged.jsonl", [{"tokens": ["Anna", "ran"], "tags": ["B-PER", "O"]}])
    for extra in (["--pooling", "cls"], ["--window-pool", "max"]):
        assert "is for classification and regression, not tagging" in _cli_error(
            capsys, base, root, "tagging", tagged, None, *extra)
    twice = root / "twice.csv"  # which "text" would be read? neither: refused
    twice.write_text("text,label,text\nthe cat,a,first\nthe dog,b,second\n")
    assert "twice.csv:1: the header names column 'text' twice" in _cli_error(capsys, base, root, "classification",
                                                                               twice)
    unclosed = root / "unclosed.tsv"  # a quote never closed swallows the rest: named where it opened
    unclosed.write_text('text\tlabel\nthe cat\ta\n"the dog\tb\nthe cow\ta\n')
    err = _cli_error(capsys, base, root, "classification", unclosed)
    assert "unclosed.tsv:3-4: 1 field but the header has 2; a quote opened on line 3 may not be closed" in err
    stray = root / "stray.csv"  # the same in the label column: the rows after it became one label
    stray.write_text('text,label\nthe cat,a\nthe dog,"b\nthe cow,a\nthe hen,b\n')
    err = _cli_error(capsys, base, root, "classification", stray)
    assert "stray.csv:3-5: label 'label' runs over several lines" in err and "quote opened on line 3" in err
    last = root / "last.csv"  # left open on the last line: one field holding the separator
    last.write_text('text,label\nthe cat,a\n"the dog,b\n')
    assert "last.csv:3: 1 field but the header has 2; a quote opened on line 3 may not be closed" in _cli_error(
        capsys, base, root, "classification", last)
    empty = _write_jsonl(root / "empty.jsonl", [{"text": " ", "label": "a"}])
    assert "empty.jsonl:1: 'text' is empty" in _cli_error(capsys, base, root, "classification", empty)
    unseen = _write_jsonl(root / "unseen.jsonl", [{"text": "the cat", "label": "c"}])
    assert "unseen.jsonl:1: label 'c' does not occur" in _cli_error(capsys, base, root, "classification",
                                                                    good, unseen)
    long = _write_jsonl(root / "long.jsonl", [{"text": "the cat " * 40, "label": "a"}])
    assert "long.jsonl:1" in _cli_error(capsys, base, root, "classification", good, long)
    bioes = root / "bioes.conll"
    bioes.write_text("Anna\tB-PER\nSmith\tE-PER\n")
    err = _cli_error(capsys, base, root, "tagging", bioes)
    assert "bioes.conll:2: tag 'E-PER' is not BIO" in err
    bad_line = root / "badline.conll"
    bad_line.write_text("Anna\tB-PER\n\nSmith\n")
    assert "badline.conll:3: expected 'token<TAB>tag'" in _cli_error(capsys, base, root, "tagging", bad_line)
    no_entities = root / "o.conll"
    no_entities.write_text("the\tO\ncat\tO\n")
    assert "every tag is O" in _cli_error(capsys, base, root, "tagging", no_entities)
    mismatch = _write_jsonl(root / "mm.jsonl", [{"tokens": ["a", "b"], "tags": ["O"]}])
    assert "mm.jsonl:1: 2 tokens but 1 tags" in _cli_error(capsys, base, root, "tagging", mismatch)
    with pytest.raises(DataError, match="does not exist"):
        finetune(base, FinetuneArgs(task="tagging", train=str(root / "nope.conll"), validation=str(bioes),
                                    out=str(root / "never")), log=None)


def test_out_is_never_replaced_without_overwrite_and_never_the_base(root, base, capsys):
    good = _write_jsonl(root / "ok2.jsonl", [{"text": "the cat", "label": "a"}, {"text": "the dog", "label": "b"}])
    taken = root / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    base_files = {f.name: f.read_bytes() for f in base.iterdir() if f.is_file()}
    for out, extra, message in ((taken, [], "pass --overwrite"), (base, ["--overwrite"], "which this command reads")):
        code = main(["finetune", "--model", str(base), "--task", "classification", "--train", str(good),
                     "--validation", str(good), "--out", str(out), "--epochs", "1", *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert [f.name for f in taken.iterdir()] == ["keep.txt"]
    assert {f.name: f.read_bytes() for f in base.iterdir() if f.is_file()} == base_files
    data = root / "mydata"  # --out the folder holding the training and validation files: refused even so
    data.mkdir()
    mine = _write_jsonl(data / "train.jsonl", [{"text": "the cat", "label": "a"}, {"text": "the dog", "label": "b"}])
    for train in (mine, good):
        code = main(["finetune", "--model", str(base), "--task", "classification", "--train", str(train),
                     "--validation", str(mine), "--out", str(data), "--epochs", "1", "--overwrite"])
        err = capsys.readouterr().err
        assert code == 2 and f"would replace {mine}, which this command reads" in err and err.count("\n") == 1, err
    assert [f.name for f in data.iterdir()] == ["train.jsonl"]
    (taken / "file").write_text("mine")
    code = main(["finetune", "--model", str(base), "--task", "classification", "--train", str(good),
                 "--validation", str(good), "--out", str(taken / "file"), "--epochs", "1"])
    err = capsys.readouterr().err  # a file is no folder, with --overwrite or without
    assert code == 2 and "is a file; choose a folder" in err and (taken / "file").read_text() == "mine"


@pytest.mark.parametrize("when", ["before its first save", "after its first save"])
def test_a_run_never_replaces_an_out_another_run_wrote_meanwhile(root, base, capsys, monkeypatch, when):
    """Two fine-tuning runs into one --out (a job launched twice): each saves after every better epoch, so
    each would replace the other's model. The run that finds --out written by another stops, in one line."""
    from masklm.finetune import train as ft

    good = _write_jsonl(root / "ok3.jsonl", [{"text": "the cat", "label": "a"}, {"text": "the dog", "label": "b"}])
    out = root / f"shared-{when.split()[0]}"
    real_evaluate, epochs = ft.evaluate, []

    def and_another_run_saves(*args, **kwargs):  # the other run's save lands between two of this run's
        epochs.append(1)
        if len(epochs) == (1 if when.startswith("before") else 2):
            other = out.with_name(out.name + "-other")
            other.mkdir()
            (other / "training_args.json").write_text(json.dumps({"finetune": {"run_id": "0ther"}}))
            if out.exists():
                shutil.rmtree(out)
            other.rename(out)
        scores = real_evaluate(*args, **kwargs)
        return {**scores, "accuracy": len(epochs)}  # every epoch better: every epoch saves

    monkeypatch.setattr(ft, "evaluate", and_another_run_saves)
    code = main(["finetune", "--model", str(base), "--task", "classification", "--train", str(good),
                 "--validation", str(good), "--out", str(out), "--epochs", "3"])
    err = capsys.readouterr().err
    assert code == 2 and f"--out {out} was written by the fine-tuning run 0ther while this run trained" in err
    assert "Traceback" not in err
    assert json.loads((out / "training_args.json").read_text()) == {"finetune": {"run_id": "0ther"}}


def test_a_full_disk_keeps_the_last_best_model_and_says_so(root, base, capsys, monkeypatch):
    from masklm.errors import DiskFull
    from masklm.finetune import train as ft

    good = _write_jsonl(root / "ok4.jsonl", [{"text": "the cat", "label": "a"}, {"text": "the dog", "label": "b"}])
    out = root / "full"
    real_evaluate, real_save, calls = ft.evaluate, ft.save_model_dir, []

    def better(*args, **kwargs):
        calls.append(1)
        return {**real_evaluate(*args, **kwargs), "accuracy": len(calls)}  # every epoch better: every epoch saves

    def fills_the_disk(target, *args, **kwargs):
        if len(calls) == 2:
            raise DiskFull(Path(target).absolute())
        return real_save(target, *args, **kwargs)

    monkeypatch.setattr(ft, "evaluate", better)
    monkeypatch.setattr(ft, "save_model_dir", fills_the_disk)
    code = main(["finetune", "--model", str(base), "--task", "classification", "--train", str(good),
                 "--validation", str(good), "--out", str(out), "--epochs", "3"])
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines()[-1] == (
        f"masklm: error: no space left on the disk holding {out.absolute()}; nothing was left half-written: free "
        f"some space, then run the command again with --overwrite ({out} holds the model of epoch 1)")
    assert json.loads((out / "training_args.json").read_text())["history"][-1]["epoch"] == 1


def test_ctrl_c_after_a_saved_epoch_says_what_out_holds(root, base, capsys, monkeypatch):
    from masklm.finetune import train as ft

    good = _write_jsonl(root / "ok5.jsonl", [{"text": "the cat", "label": "a"}, {"text": "the dog", "label": "b"}])
    out = root / "interrupted"
    real_evaluate, calls = ft.evaluate, []

    def interrupted_in_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return {**real_evaluate(*args, **kwargs), "accuracy": 0.5 if len(calls) == 1 else 0.25}  # epoch 1 is best

    monkeypatch.setattr(ft, "evaluate", interrupted_in_epoch_3)
    code = main(["finetune", "--model", str(base), "--task", "classification", "--train", str(good),
                 "--validation", str(good), "--out", str(out), "--epochs", "5"])
    err = capsys.readouterr().err.splitlines()
    assert code == 130 and err[-1] == "masklm: interrupted"
    assert err[-2] == (f"masklm: {out} holds the best model so far (epoch 1, validation accuracy 0.5000): predict "
                       "can use it; a new run into it needs --overwrite")
    assert json.loads((out / "training_args.json").read_text())["history"][-1]["epoch"] == 1


@pytest.mark.parametrize("task", ["classification", "regression", "tagging"])
def test_export_hf_writes_the_head_transformers_computes_alike(root, base, capsys, tmp_path, task):
    """export-hf of a fine-tuned BERT folder: the head goes where transformers' class for the task reads it
    (a [CLS]-pooled sequence head: pooler + classifier; regression's scale folded in; tagging: classifier),
    with the labels, and AutoModelFor... gives masklm's outputs on the same ids."""
    transformers = pytest.importorskip("transformers")
    if task == "tagging":
        train = _write_jsonl(root / "t-tag.jsonl", [{"tokens": ["Anna", "ran"], "tags": ["B-PER", "O"]},
                                                    {"tokens": ["the", "Bo", "Li"], "tags": ["O", "B-PER", "I-PER"]}])
        extra, auto = [], transformers.AutoModelForTokenClassification
    else:
        label = [1.0, 7.0] if task == "regression" else ["neg", "pos"]
        train = _write_jsonl(root / f"t-{task}.jsonl", [{"text": "the cat sat", "label": label[0]},
                                                        {"text": "a good dog ran", "label": label[1]}])
        extra, auto = ["--pooling", "cls"], transformers.AutoModelForSequenceClassification
    out = tmp_path / "ft"
    assert main(["finetune", "--model", str(base), "--task", task, "--train", str(train), "--validation",
                 str(train), "--out", str(out), "--epochs", "2", "--lr", "1e-2", *extra]) == 0
    assert main(["export-hf", "--model", str(out), "--out", str(tmp_path / "hf")]) == 0
    capsys.readouterr()
    hf = auto.from_pretrained(str(tmp_path / "hf")).eval()
    pipe = masklm.load(out)
    labels = pipe.model.config.task["labels"]
    assert [hf.config.id2label[i] for i in range(len(labels))] == labels
    ids = torch.tensor([pipe.tokenizer.encode("the good cat sat").ids])
    with torch.no_grad():
        theirs = hf(input_ids=ids).logits
        ours = pipe.model(ids, torch.ones_like(ids))
    n = forward_terms(pipe.config, ids.shape[1])
    if task == "regression":  # transformers outputs the target itself: masklm's value
        assert hf.config.problem_type == "regression"
        assert close(theirs[0, 0], torch.tensor(pipe.classify("the good cat sat")["value"]), n=n)
    else:
        assert close(theirs, ours, n=n) and float(ours.abs().max()) > 1e-3


def test_export_hf_of_a_mean_pooled_head_warns_that_only_the_encoder_loads(root, base, capsys, tmp_path):
    train = _write_jsonl(root / "t-mean.jsonl", [{"text": "the cat", "label": "a"}, {"text": "the dog", "label": "b"}])
    out = tmp_path / "ft"
    assert main(["finetune", "--model", str(base), "--task", "classification", "--train", str(train),
                 "--validation", str(train), "--out", str(out), "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(["export-hf", "--model", str(out), "--out", str(tmp_path / "hf")]) == 0
    err = capsys.readouterr().err
    assert "pools the mean of the tokens, which no transformers class does" in err and err.count("\n") == 1
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["BertModel"]
    from safetensors import safe_open
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), framework="pt") as f:
        assert not [k for k in f.keys() if k.startswith("head.")]  # the encoder alone: nothing left unexpected
