"""``masklm tokenizer extend``: domain words added whole, embeddings grown from their old pieces, a folder that
loads, trains with --init-from and loads in transformers (BERT)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from masklm.cli import main
from masklm.config import ModelConfig
from masklm.modeldir import load_model_dir, save_model_dir
from masklm.models import build_model
from masklm.tokenizer import train_tokenizer
from masklm.training.vocab_extend import _bpe, count_words, rank_candidates

GENERAL = ["the patient was seen today and the doctor said the test was fine",
           "the cat sat on the mat and the dog ran under the tree",
           "The Quick Brown Fox Jumps Over A Lazy Dog; E B I T D A (x) y z.",
           "aE oB uI eT iD oA hy yp pe er rl li id da ae em mi ia"]  # every letter also inside a word
# The three domain terms are long and frequent; every other word is general or rare.
DOMAIN = ["troponin was high; the troponin and the hyperlipidaemia, troponin again and EBITDA",
          "EBITDA fell and the troponin was seen (troponin) and hyperlipidaemia persisted",
          "the troponin test and EBITDA margin; hyperlipidaemia and EBITDA today"]
ADDED = {"wordpiece": ["hyperlipidaemia", "troponin", "EBITDA"], "bpe": ["Ġhyperlipidaemia", "Ġtroponin", "ĠEBITDA"]}
ARCH = {"wordpiece": "bert", "bpe": "ltg-bert"}
BIAS = {"bert": "cls.predictions.bias", "ltg-bert": "classifier.bias"}
EMBED = {"bert": "bert.embeddings.word_embeddings.weight", "ltg-bert": "embedding.word_embedding.weight"}


def _base(tmp_path, kind):
    tok = train_tokenizer(GENERAL * 20, kind=kind, vocab_size=120 if kind == "wordpiece" else 330, min_frequency=1)
    config = ModelConfig.from_preset(ARCH[kind], "tiny", vocab_size=tok.vocab_size, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():  # a non-zero bias, so the test sees it grow row by row
        dict(model.named_parameters())[BIAS[config.arch]].normal_()
    base = save_model_dir(tmp_path / "base", model, tok)
    domain = tmp_path / "domain.txt"
    domain.write_text("\n\n".join(DOMAIN * 10), encoding="utf-8")
    return base, domain, model, tok


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_extend_adds_whole_words_and_mean_rows(tmp_path, capsys, kind):
    base, domain, model, tok = _base(tmp_path, kind)
    out = tmp_path / "ext"
    assert main(["tokenizer", "extend", "--model", str(base), "--corpus", str(domain), "--add", "3",
                 "--out", str(out), "--heldout-fraction", "0.1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["words_added"] == 3 and [w["word"] for w in report["top"]] == ADDED[kind]
    before, after = report["heldout_before"], report["heldout_after"]
    assert before["words"] == after["words"] > 0 and after["pieces_per_word"] < before["pieces_per_word"]

    extended, config, new_tok = load_model_dir(out)
    assert config.vocab_size == new_tok.vocab_size == tok.vocab_size + report["tokens_added"]
    assert json.loads((out / "config.json").read_text())["vocab_size"] == config.vocab_size
    # WordPiece: whole wherever the pre-tokenizer makes it a word (first, after whitespace or punctuation).
    # Byte-level BPE: whole after a space ("Ġtroponin"); first or after "(" it is another word, "troponin".
    texts = {"wordpiece": ["troponin rose", "the troponin rose", "(troponin) EBITDA"],
             "bpe": ["the troponin rose", "rose, troponin. EBITDA"]}[kind]
    whole = {"wordpiece": "troponin", "bpe": "Ġtroponin"}[kind]
    for text in texts:
        assert whole in new_tok.encode(text).tokens and whole not in tok.encode(text).tokens
        assert new_tok.decode(new_tok.encode(text).ids) == tok.decode(tok.encode(text).ids) == tok.normal_form(text)
    old = model.state_dict()
    new = extended.state_dict()
    for name in (EMBED[config.arch], BIAS[config.arch]):
        assert torch.equal(new[name][:tok.vocab_size], old[name])  # old rows untouched
        for word in report["top"]:
            piece_ids = [tok.token_to_id(p) for p in word["pieces"]]
            expected = old[name][piece_ids].mean(0)
            assert torch.allclose(new[name][new_tok.token_to_id(word["word"])], expected, rtol=0, atol=1e-6)
    for name in old:  # every other tensor is copied exactly
        if name not in (EMBED[config.arch], BIAS[config.arch]):
            assert torch.equal(new[name], old[name]), name


def test_bpe_chain_keeps_earlier_words_whole():
    """BPE's rule on the chain merges: later merges never undo an earlier word."""
    ranks = {("a", "b"): 0, ("ab", "c"): 1}
    assert _bpe(["a", "b", "c", "d"], ranks) == ["abc", "d"]
    ranks[("abc", "d")] = 2
    assert _bpe(["a", "b", "c", "d"], ranks) == ["abcd"]
    ranks[("b", "c")] = 3  # a later chain through "b c" comes after: "abc" still wins
    assert _bpe(["a", "b", "c"], ranks) == ["abc"]


def test_candidates_are_ranked_by_frequency_times_pieces_saved(tmp_path):
    tok = train_tokenizer(GENERAL * 20, kind="wordpiece", vocab_size=120, min_frequency=1)
    counts = count_words(tok, DOMAIN * 10)
    ranked, unknown = rank_candidates(tok, counts, min_frequency=2)
    scores = [c.score for c in ranked]
    assert scores == sorted(scores, reverse=True) and unknown >= 1  # ";" and "(" are unknown to this vocab
    for c in ranked:
        assert c.score == counts[c.word] * (len(tok.encode(c.word, add_special_tokens=False).ids) - 1)
    assert "the" not in {c.word for c in ranked}  # one piece: nothing to save


@pytest.mark.slow
def test_extend_refuses_existing_out_and_bad_input(tmp_path, capsys):
    base, domain, _, _ = _base(tmp_path, "wordpiece")
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["tokenizer", "extend", "--model", str(base), "--corpus", str(domain), "--add", "2"]
    assert main(args + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists and holds files; pass --overwrite" in err and err.count("\n") == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(args + ["--out", str(base), "--overwrite"]) == 2  # never over the folder it reads
    assert "which this command reads" in capsys.readouterr().err
    corpus = tmp_path / "notes" / "domain.txt"  # nor over the folder of its corpus
    corpus.parent.mkdir()
    corpus.write_bytes(domain.read_bytes())
    on_corpus = ["tokenizer", "extend", "--model", str(base), "--corpus", str(corpus), "--add", "2"]
    assert main(on_corpus + ["--out", str(corpus.parent), "--overwrite"]) == 2
    assert f"would replace {corpus}, which this command reads" in capsys.readouterr().err and corpus.is_file()
    assert main(args + ["--out", str(out), "--overwrite"]) == 0
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()
    assert main(["tokenizer", "extend", "--model", str(base), "--corpus", str(domain), "--add", "0",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--add must be >= 1" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["tokenizer", "extend", "--model", str(base), "--corpus", str(domain), "--add", "2",
                 "--min-frequency", "1000", "--out", str(tmp_path / "y")]) == 2
    assert "lower --min-frequency" in capsys.readouterr().err and not (tmp_path / "y").exists()
    tuned = tmp_path / "tuned"  # a fine-tuned folder (a task block) is refused: extend its pretrained folder
    shutil.copytree(base, tuned)
    config = json.loads((tuned / "config.json").read_text())
    (tuned / "config.json").write_text(json.dumps({**config, "task": {"kind": "classification"}}))
    assert main(["tokenizer", "extend", "--model", str(tuned), "--corpus", str(domain), "--add", "2",
                 "--out", str(tmp_path / "z")]) == 2
    assert "fine-tuned model folder" in capsys.readouterr().err and not (tmp_path / "z").exists()
    assert main(["tokenizer", "extend", "--model", str(base), "--corpus", str(domain), "--add", "500",
                 "--out", str(tmp_path / "all")]) == 0
    assert "of the 500 asked for" in capsys.readouterr().out


@pytest.mark.slow
def test_extended_folder_trains_with_init_from_and_loads_in_transformers(tmp_path, capsys):
    base, domain, _, _ = _base(tmp_path, "wordpiece")
    ext = tmp_path / "ext"
    assert main(["tokenizer", "extend", "--model", str(base), "--corpus", str(domain), "--add", "3",
                 "--out", str(ext)]) == 0
    assert "pieces per word on" in capsys.readouterr().out
    run = tmp_path / "run"
    assert main(["train", "--init-from", str(ext), "--corpus", str(domain), "--max-steps", "2", "--batch-size", "2",
                 "--seq-len", "32", "--eval-every", "0", "--save-every", "0", "--out", str(run)]) == 0
    model, config, tok = load_model_dir(run / "final")
    assert config.vocab_size == load_model_dir(ext)[1].vocab_size and tok.token_to_id("troponin") is not None
    assert json.loads((run / "training_args.json").read_text())["arch"] == config.arch  # the record says what ran
    capsys.readouterr()
    for clash in (["--size", "small"], ["--tokenizer", str(ext)], ["--arch", "gpt-bert", "--vocab-size", "99"]):
        assert main(["train", "--init-from", str(ext), "--corpus", str(domain), "--max-steps", "2",
                     "--out", str(tmp_path / "never"), *clash]) == 2  # it would be ignored: refused, by name
        err = capsys.readouterr().err
        assert "starts from that folder's model and tokenizer; leave out " + clash[0] in err, err
        assert err.count("\n") == 1 and not (tmp_path / "never").exists()
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForMaskedLM.from_pretrained(str(ext)).eval()
    ours = load_model_dir(ext)[0]
    ids = torch.tensor([tok.encode("the troponin rose").ids])
    with torch.no_grad():
        expected = ours(ids).logits
        got = hf(input_ids=ids).logits
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-4)
