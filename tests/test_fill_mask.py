"""fill-mask: the Hugging Face schema and numbers, several masks, targets, the bad-input errors, and the
reading of models trained with mntp (one position to the left, with mntp as their default sentence score)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from conftest import approx, forward_terms

import masklm
from masklm.cli import main
from masklm.errors import InputError, MaskLMError

WORDS = "the a cat dog bird sat ran flew on under over mat tree house and then".split()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from masklm.training.config import TrainConfig
    from masklm.training.trainer import train

    root = tmp_path_factory.mktemp("fm")
    rng = random.Random(1)
    text = "\n\n".join(" ".join(rng.choice(WORDS) for _ in range(30)) + " ." for _ in range(40))
    (root / "c.txt").write_text(text)
    cfg = TrainConfig(out=str(root / "run"), corpus=[str(root / "c.txt")], vocab_size=100, seq_len=32,
                      batch_size=8, max_steps=10, progress=False, log_every=5,
                      model={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                             "intermediate_size": 64, "max_position_embeddings": 64})
    return train(cfg) / "final"


def test_schema_and_numbers_match_transformers_pipeline(model_dir):
    transformers = pytest.importorskip("transformers")
    ours = masklm.load(model_dir)
    hf = transformers.pipeline("fill-mask", model=str(model_dir), tokenizer=str(model_dir), device="cpu")
    n = forward_terms(ours.config, softmax=True)  # softmax probabilities, at most 1: scale 1
    for text in ["the cat [MASK] on the mat .", "a dog ran [MASK] the tree and [MASK] ."]:
        a, b = ours.fill_mask(text, top_k=4), hf(text, top_k=4)
        flat_a = a if isinstance(a[0], dict) else [c for m in a for c in m]
        flat_b = b if isinstance(b[0], dict) else [c for m in b for c in m]
        assert len(flat_a) == len(flat_b)
        for x, y in zip(flat_a, flat_b):
            assert set(x) == {"score", "token", "token_str", "sequence"}
            assert x["token"] == y["token"] and x["sequence"] == y["sequence"]
            assert x["token_str"] == y["token_str"]
            assert x["score"] == approx(y["score"], scale=1.0, n=n)
    # targets restrict the candidates and are ranked like HF does
    a = ours.fill_mask("the cat [MASK] on the mat .", targets=["sat", "ran", "mat"], top_k=5)
    b = hf("the cat [MASK] on the mat .", targets=["sat", "ran", "mat"], top_k=5)
    assert [c["token_str"] for c in a] == [c["token_str"] for c in b] and len(a) == 3
    assert [c["score"] for c in a] == approx([c["score"] for c in b], scale=1.0, n=n)


def test_output_shapes(model_dir):
    pipe = masklm.load(model_dir)
    one = pipe.fill_mask("the [MASK] sat .", top_k=3)
    assert isinstance(one, list) and len(one) == 3 and isinstance(one[0], dict)
    assert one[0]["score"] >= one[1]["score"] >= one[2]["score"]
    two = pipe.fill_mask("the [MASK] sat [MASK] .", top_k=2)
    assert len(two) == 2 and all(len(m) == 2 for m in two)
    many = pipe.fill_mask(["the [MASK] sat .", "a [MASK] ran ."], top_k=2)
    assert len(many) == 2 and all(len(r) == 2 and isinstance(r[0], dict) for r in many)
    # batching does not change the numbers
    alone = pipe.fill_mask("a [MASK] ran .", top_k=2)
    n = forward_terms(pipe.config, softmax=True)  # softmax probabilities, at most 1: scale 1
    assert [c["score"] for c in alone] == approx([c["score"] for c in many[1]], scale=1.0, n=n)
    # scores are probabilities from the softmax over the vocabulary
    full = pipe.fill_mask("the [MASK] sat .", top_k=pipe.config.vocab_size)
    assert sum(c["score"] for c in full) == approx(1.0, n=pipe.config.vocab_size)  # a softmax sums V terms


def test_bad_input(model_dir, tmp_path, capsys):
    pipe = masklm.load(model_dir)
    with pytest.raises(InputError, match=r"no \[MASK\]"):
        pipe.fill_mask("no mask here")
    with pytest.raises(InputError, match="maximum of 32"):  # the rows it was trained on, not its 64 positions
        pipe.fill_mask("the " * 80 + "[MASK]")
    assert main(["fill-mask", "--model", str(model_dir), "nothing to fill"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[MASK]" in err and "Traceback" not in err
    assert main(["fill-mask", "--model", str(tmp_path / "nowhere"), "the [MASK] ."]) == 2
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(MaskLMError):
        masklm.load(tmp_path)


def test_cli_json(model_dir, capsys):
    assert main(["fill-mask", "--model", str(model_dir), "the [MASK] sat .", "--top-k", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 2 and out[0]["sequence"].startswith("the ")
    pipe = masklm.load(model_dir)
    assert out == json.loads(json.dumps(pipe.fill_mask("the [MASK] sat .", top_k=2)))  # same computation
    assert torch.is_tensor(next(pipe.model.parameters()))


def test_mntp_models_read_masks_one_position_left(model_dir, tmp_path, capsys):
    """GPT-BERT's MNTP predicts the token at j from position j - 1 (research/ltg_bert.md §6): a folder
    whose training_args.json lists mntp is read there by fill-mask, and scored with mntp by default."""
    from masklm.scoring.minimal_pairs import Pair, evaluate

    mntp_dir = tmp_path / "mntp"
    shutil.copytree(model_dir, mntp_dir)
    args = json.loads((mntp_dir / "training_args.json").read_text())
    (mntp_dir / "training_args.json").write_text(json.dumps(args | {"objectives": ["mntp", "clm"]}))
    plain, mntp = masklm.load(model_dir), masklm.load(mntp_dir)
    assert (plain.mask_shift, mntp.mask_shift) == (0, 1)

    text = "the cat [MASK] on the mat ."
    ids = torch.tensor([plain.tokenizer.encode(text).ids])
    j = ids[0].tolist().index(plain.tokenizer.mask_id)
    n = forward_terms(plain.config, softmax=True)  # softmax probabilities, at most 1: scale 1
    with torch.no_grad():
        hidden = plain.model.encode(ids, attention_mask=torch.ones_like(ids))     # [1, T, D]
        for pipe, read_at in ((plain, j), (mntp, j - 1)):
            scores, idx = plain.model.predict(hidden[0, read_at]).float().softmax(-1).topk(3)
            got = pipe.fill_mask(text, top_k=3)
            assert [c["token"] for c in got] == idx.tolist()
            assert [c["score"] for c in got] == approx(scores.tolist(), scale=1.0, n=n)
    assert plain.fill_mask(text)[0]["score"] != mntp.fill_mask(text)[0]["score"]

    sentence = "the cat sat on the mat ."
    assert (plain.default_metric, mntp.default_metric) == ("pll", "mntp")
    # bit-exact: the default metric is the same computation as naming it
    assert mntp.score(sentence) == mntp.score(sentence, metric="mntp") != mntp.score(sentence, metric="pll")
    assert plain.score(sentence) == plain.score(sentence, metric="pll")
    assert evaluate(mntp, [Pair("the cat sat .", "cat the sat .", "order")])["metric"] == "mntp"
    assert main(["score", "--model", str(mntp_dir), sentence]) == 0
    assert "scoring with mntp" in capsys.readouterr().err
    fresh = masklm.load(mntp_dir)
    fresh.score(sentence, metric="pll")   # allowed, with one warning naming the metric that fits
    fresh.score(sentence, metric="pll")
    assert capsys.readouterr().err.count("warning: the pll score reads this model in a way it was not trained "
                                         "for (objectives: clm, mntp); mntp fits it") == 1
    fresh.score(sentence, metric="causal")  # mntp,clm: the causal score fits too
    plain.score(sentence, metric="mntp")   # the fill-mask fixture was trained with mlm only
    err = capsys.readouterr().err
    assert "causal score" not in err and "the mntp score reads this model" in err and "pll fits it" in err


def test_cli_text_of_several_masks_shows_no_cls_or_sep(model_dir, capsys):
    """The JSON keeps Hugging Face's sequence with the specials (the other masks show); the text a person
    reads leaves [CLS] and [SEP] out and keeps the other mask."""
    assert main(["fill-mask", "--model", str(model_dir), "the [MASK] sat on the [MASK] .", "--top-k", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "  mask 1:" and lines[3] == "  mask 2:"
    for line in (lines[2], lines[4]):
        assert "[CLS]" not in line and "[SEP]" not in line and "[MASK]" in line
    assert "sat on the [MASK]" in lines[2]
