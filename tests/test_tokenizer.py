"""Tokenizers: special ids, save/load, transformers compatibility, round trips, word starts."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import islice

import numpy as np
import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import models, pre_tokenizers, processors

from masklm.data.corpus import iter_documents
from masklm.errors import ConfigError, ModelDirError
from masklm.tokenizer import SPECIAL_TOKENS, Tokenizer, train_tokenizer, word_starts

SAMPLES = ["the unbelievable shepherds", "hello world.", "extraordinary river, quickly wandering"]


@pytest.fixture(params=["wordpiece", "bpe"])
def tokenizer(request, wordpiece_tokenizer, bpe_tokenizer):
    return wordpiece_tokenizer if request.param == "wordpiece" else bpe_tokenizer


def test_special_tokens_and_templates(tokenizer):
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id) == (0, 1, 2, 3, 4)
    assert tokenizer.special_ids == [0, 1, 2, 3, 4] and tokenizer.mask_token == "[MASK]"
    single = tokenizer.encode("hello world")
    assert single.ids[0] == 2 and single.ids[-1] == 3
    assert tokenizer.encode("hello world", add_special_tokens=False).ids == single.ids[1:-1]
    pair = tokenizer.backend.encode("hello", "world")
    assert pair.ids.count(3) == 2 and pair.type_ids[-1] == 1 and pair.type_ids[0] == 0
    assert tokenizer.vocab_size == tokenizer.backend.get_vocab_size(with_added_tokens=True)


def test_save_load_and_fingerprint(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    assert loaded.fingerprint() == tokenizer.fingerprint()
    assert loaded.kind == tokenizer.kind and loaded.model_max_length == 512
    for text in SAMPLES:
        assert loaded.encode(text).ids == tokenizer.encode(text).ids
    other = train_tokenizer(SAMPLES * 3, kind=tokenizer.kind, vocab_size=tokenizer.vocab_size + 20, min_frequency=1)
    assert other.fingerprint() != tokenizer.fingerprint()


def test_transformers_autotokenizer_loads_the_folder(tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    tokenizer.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf.mask_token == "[MASK]" and hf.mask_token_id == 4
    assert (hf.pad_token_id, hf.cls_token_id, hf.sep_token_id, hf.unk_token_id) == (0, 2, 3, 1)
    for text in SAMPLES:
        assert hf(text)["input_ids"] == tokenizer.encode(text).ids


def test_byte_level_bpe_round_trips_any_unicode(bpe_tokenizer):
    for text in ["你好，世界", "Привет, мир", "مرحبا بالعالم", "emoji 😀👍🏽 🇳🇴!", "tab\tand\nnewline  twice"]:
        ids = bpe_tokenizer.encode(text).ids
        assert bpe_tokenizer.unk_id not in ids
        assert bpe_tokenizer.decode(ids, skip_special_tokens=True) == text


def test_wordpiece_is_cased_and_decodes(wordpiece_tokenizer):
    assert wordpiece_tokenizer.decode(wordpiece_tokenizer.encode("the unbelievable river").ids) == "the unbelievable river"
    assert wordpiece_tokenizer.encode("Hello").ids != wordpiece_tokenizer.encode("hello").ids


def _words(encoding, starts):
    """Group non-special tokens into words at the starts -> list of (first offset, last offset)."""
    groups = []
    for i, special in enumerate(encoding.special_tokens_mask):
        if special:
            continue
        if starts[i] or not groups:
            groups.append([i])
        else:
            groups[-1].append(i)
    return groups


@pytest.mark.parametrize("text", ["the unbelievable shepherds quickly", "extraordinary,  river\n\nlantern\twhispering"])
def test_word_starts_group_multi_piece_words(tokenizer, text):
    encoding = tokenizer.encode(text)
    starts = word_starts(encoding)
    assert starts.dtype == bool and starts.shape == (len(encoding.ids),)
    assert not starts[0] and not starts[-1]  # [CLS] and [SEP]
    assert np.array_equal(starts, word_starts(encoding, text))
    groups = _words(encoding, starts)
    spans = [text[encoding.offsets[g[0]][0]:encoding.offsets[g[-1]][1]].strip() for g in groups]
    assert spans == text.split()
    assert max(len(g) for g in groups) >= 3  # the test really covers words of several pieces
    # The pieces of one word tile it: each later piece starts where the previous one ended.
    for group in groups:
        pieces = [encoding.offsets[i] for i in group if encoding.offsets[i][1] > encoding.offsets[i][0]]
        assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))


def test_word_starts_after_specials_in_pairs(wordpiece_tokenizer):
    encoding = wordpiece_tokenizer.backend.encode("hello world", "hello")
    starts = word_starts(encoding)
    tokens = encoding.tokens
    second = tokens.index("[SEP]") + 1
    assert starts[1] and starts[second] and starts.sum() == 3


def test_load_reads_special_tokens_from_config(tmp_path):
    vocab = {f"tok{i}": i for i in range(110)}
    vocab.update({"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, "hello": 7})
    vocab = {k: v for k, v in vocab.items() if not (k.startswith("tok") and v in (0, 7, 100, 101, 102, 103))}
    backend = Backend(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 101), ("[SEP]", 102)])
    backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "mask_token": {"content": "[MASK]", "lstrip": False}, "model_max_length": 1e30}))
    loaded = Tokenizer.load(tmp_path)
    assert (loaded.mask_id, loaded.cls_id, loaded.unk_id) == (103, 101, 100)
    assert loaded.model_max_length == 512
    assert loaded.encode("hello").ids == [101, 7, 102]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"mask_token": "<mask>"}))
    with pytest.raises(ModelDirError, match="<mask>"):
        Tokenizer.load(tmp_path)


def test_load_errors(tmp_path):
    with pytest.raises(ModelDirError, match="no tokenizer.json"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ModelDirError, match="cannot read"):
        Tokenizer.load(tmp_path)


def test_bad_training_arguments():
    with pytest.raises(ConfigError, match="unknown tokenizer kind"):
        train_tokenizer(["x"], kind="unigram")
    with pytest.raises(ConfigError, match="at least 261"):
        train_tokenizer(["x"], kind="bpe", vocab_size=100)


def test_training_streams_kjv_quickly():
    tok = train_tokenizer(islice(iter_documents(["kjv"]), 200), kind="wordpiece", vocab_size=2000)
    assert tok.vocab_size == 2000
    assert len(tok.encode("And God said", add_special_tokens=False).ids) == 3


def test_cli_tokenizer_train(cli, capsys, tmp_path, documents):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(documents))
    out = tmp_path / "tok"
    assert cli(["tokenizer", "train", "--corpus", str(corpus), "--out", str(out), "--kind", "bpe",
                "--vocab-size", "280", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["vocab_size"] == 280 and summary["corpus"]["documents"] == len(documents)
    assert Tokenizer.load(out).kind == "bpe"
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    assert cli(["tokenizer", "train", "--corpus", str(corpus), "--out", str(out), "--vocab-size", "100"]) == 2
    err = capsys.readouterr().err  # a folder that holds files is never replaced without --overwrite
    assert "already exists and holds files; pass --overwrite" in err and err.count("\n") == 1
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert cli(["tokenizer", "train", "--corpus", str(corpus), "--out", str(out), "--vocab-size", "100",
                "--json", "--overwrite"]) == 0
    summary = json.loads(capsys.readouterr().out)  # WordPiece reads the corpus twice; counted once
    assert cli(["tokenizer", "train", "--corpus", str(corpus), "--out", str(tmp_path / "tok0"), "--model-max-length",
                "0"]) == 2 and not (tmp_path / "tok0").exists()
    assert "--model-max-length must be >= 1" in capsys.readouterr().err
    assert cli(["tokenizer", "train", "--corpus", str(corpus), "--out", str(tmp_path / "tok0"), "--vocab-size",
                "0"]) == 2  # one line: refused before "training a tokenizer" is said
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vocab_size 0 is too small" in err
    assert cli(["tokenizer", "train", "--corpus", str(corpus), "--out", str(tmp_path), "--vocab-size", "100",
                "--overwrite"]) == 2  # never into the folder of the corpus it reads
    assert f"would replace {corpus}, which this command reads" in capsys.readouterr().err
    assert summary["vocab_size"] == 100 and summary["corpus"]["documents"] == len(documents)
    assert cli(["tokenizer", "train", "--corpus", str(tmp_path / "nope"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("masklm: error: corpus") and err.count("\n") == 1


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_training_is_reproducible_across_processes(kind):
    """Two fresh processes (each with its own hash seeds) train the same vocabulary. The tokenizers
    WordPiece trainer alone does not (huggingface/tokenizers#1794): on this text it gave a different
    fingerprint in each of three processes before masklm fixed the ids of the ##c pieces."""
    script = ("import itertools, sys; from masklm.tokenizer import train_tokenizer; "
              "from masklm.data.corpus import iter_documents; "
              "docs = list(itertools.islice(iter_documents('kjv'), 60)); "
              "print(train_tokenizer(docs, kind=sys.argv[1], vocab_size=600).fingerprint())")
    runs = [subprocess.run([sys.executable, "-c", script, kind], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0].strip()) == 64


def test_wordpiece_pieces_are_not_special(wordpiece_tokenizer):
    """The ##c pieces declared for training are ordinary vocabulary in the result: not special, and not
    skipped by decode."""
    tok = wordpiece_tokenizer
    assert sorted(tok.backend.get_added_tokens_decoder()) == list(range(len(SPECIAL_TOKENS)))
    assert tok.special_ids == list(range(len(SPECIAL_TOKENS)))
    enc = tok.encode("extraordinary")
    assert any(t.startswith("##") and len(t) == 3 for t in enc.tokens)   # a single ##c piece is used
    assert tok.decode(enc.ids) == "extraordinary"
