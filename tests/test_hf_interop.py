"""Hugging Face interop: masklm folders load in transformers; import-hf / export-hf round trips."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import close, forward_terms

from masklm.config import ModelConfig
from masklm.modeldir import load_model_dir, save_model_dir
from masklm.models import build_model

transformers = pytest.importorskip("transformers")

TEXTS = ["hello world", "the river quickly [MASK] the mountain of lantern"]


@pytest.fixture
def tokenizer(wordpiece_tokenizer):
    return wordpiece_tokenizer


@pytest.fixture
def cli(monkeypatch):
    import masklm.cli

    monkeypatch.setattr(masklm.cli, "COMMAND_MODULES", ["hf"])
    return masklm.cli.main


def hf_config(tokenizer) -> transformers.BertConfig:
    return transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)


def save_hf_tokenizer(tokenizer, folder):
    """A Hugging Face tokenizer folder: our backend wrapped with BERT's special tokens."""
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
    )
    fast.save_pretrained(folder)


def padded_batch(tokenizer):
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend, pad_token="[PAD]")
    enc = hf_tok(TEXTS, padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any()  # the batch really has padding
    return enc["input_ids"], enc["attention_mask"]


def assert_same_logits(ours, hf, ids, mask):
    ours.eval()
    hf.eval()
    with torch.no_grad():
        a = ours(ids, attention_mask=mask).logits
        b = hf(input_ids=ids, attention_mask=mask).logits
    assert a.shape == b.shape
    assert close(a, b, n=forward_terms(ours.config, ids.shape[1]))


def test_masklm_folder_loads_in_transformers(tmp_path, tokenizer):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    model = build_model(cfg)
    with torch.no_grad():  # a non-zero output bias, so a dropped bias would show
        model.cls.predictions.bias.normal_()
    folder = save_model_dir(tmp_path / "m", model, tokenizer)

    hf = transformers.AutoModelForMaskedLM.from_pretrained(folder)
    assert type(hf).__name__ == "BertForMaskedLM"
    assert hf.cls.predictions.decoder.weight.data_ptr() == hf.bert.embeddings.word_embeddings.weight.data_ptr()
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    assert hf_tok.mask_token_id == tokenizer.mask_id and hf_tok.pad_token_id == tokenizer.pad_id
    enc = hf_tok(TEXTS, padding=True, return_tensors="pt")
    assert enc["input_ids"][1].tolist()[: len(tokenizer.encode(TEXTS[1]).ids)] == tokenizer.encode(TEXTS[1]).ids
    assert (enc["attention_mask"] == 0).any()
    assert_same_logits(model, hf, enc["input_ids"], enc["attention_mask"])


@pytest.mark.parametrize("safe", [True, False])
def test_import_hf_masked_lm(tmp_path, tokenizer, cli, capsys, safe):
    torch.manual_seed(1)
    hf = transformers.BertForMaskedLM(hf_config(tokenizer))
    src = tmp_path / "hf"
    if safe:
        hf.save_pretrained(src)
    else:  # an older folder: pickled weights, read with weights_only=True
        hf.config.save_pretrained(src)
        torch.save(hf.state_dict(), src / "pytorch_model.bin")
    save_hf_tokenizer(tokenizer, src)
    capsys.readouterr()

    assert cli(["import-hf", "--from", str(src), "--out", str(tmp_path / "ours")]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(tmp_path / "ours") and "warning" not in captured.err
    model, config, tok = load_model_dir(tmp_path / "ours")
    assert config.vocab_size == tokenizer.vocab_size and tok.mask_id == tokenizer.mask_id
    assert_same_logits(model, hf, *padded_batch(tokenizer))


def test_import_hf_encoder_without_head_warns(tmp_path, tokenizer, cli, capsys, caplog):
    torch.manual_seed(2)
    encoder = transformers.BertModel(hf_config(tokenizer))
    src = tmp_path / "enc"
    encoder.save_pretrained(src)
    tokenizer.save(src)  # our own tokenizer files also work as the HF folder's tokenizer
    capsys.readouterr()

    assert cli(["import-hf", "--from", str(src), "--out", str(tmp_path / "ours")]) == 0
    err = capsys.readouterr().err
    assert "masklm: warning:" in err and "no MLM head" in err
    assert any("no MLM head" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    model, _, _ = load_model_dir(tmp_path / "ours")
    ids, mask = padded_batch(tokenizer)
    encoder.eval()
    with torch.no_grad():
        ours = model.encode(ids, attention_mask=mask)
        ref = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    assert close(ours[mask.bool()], ref[mask.bool()], n=forward_terms(model.config, ids.shape[1]))
    # the fresh head is initialised like HF: LayerNorm 1, zero output bias
    assert torch.all(model.cls.predictions.transform.LayerNorm.weight == 1)
    assert torch.all(model.cls.predictions.bias == 0)


def test_export_hf(tmp_path, tokenizer, cli, capsys):
    torch.manual_seed(3)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    model = build_model(cfg)
    folder = save_model_dir(tmp_path / "m", model, tokenizer)
    assert cli(["export-hf", "--model", str(folder), "--out", str(tmp_path / "hf")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert "arch" not in config and "masklm_version" not in config
    assert config["model_type"] == "bert" and config["tie_word_embeddings"] is True
    hf = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf")
    assert_same_logits(model, hf, *padded_batch(tokenizer))
    reloaded, _, _ = load_model_dir(tmp_path / "hf")  # and masklm still reads it
    assert torch.equal(reloaded.cls.predictions.bias, model.cls.predictions.bias)  # stored bytes: bit-exact


def _hf_folder(tmp_path, tokenizer, name="hf"):
    src = tmp_path / name
    transformers.BertForMaskedLM(hf_config(tokenizer)).save_pretrained(src)
    save_hf_tokenizer(tokenizer, src)
    return src


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda d: (d / "config.json").unlink(), "no config.json"),
        (lambda d: (d / "config.json").write_text(json.dumps({"model_type": "roberta"})), "'roberta' model"),
        (lambda d: (d / "tokenizer.json").unlink(), "no tokenizer"),
        (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors or pytorch_model.bin"),
    ],
)
def test_import_hf_bad_folders_exit_2(tmp_path, tokenizer, cli, capsys, breakage, message):
    src = _hf_folder(tmp_path, tokenizer)
    breakage(src)
    capsys.readouterr()  # drop transformers' progress output from saving
    assert cli(["import-hf", "--from", str(src), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("masklm: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_export_hf_missing_folder_exits_2(tmp_path, cli, capsys):
    assert cli(["export-hf", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and err.count("\n") == 1


def test_export_and_import_never_replace_a_folder_without_overwrite(tmp_path, tokenizer, cli, capsys):
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    folder = save_model_dir(tmp_path / "m", build_model(cfg), tokenizer)
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    files = {f.name: f.read_bytes() for f in folder.iterdir()}
    for args in (["export-hf", "--model", str(folder), "--out", str(project)],
                 ["import-hf", "--from", str(folder), "--out", str(project)]):
        assert cli(args) == 2
        err = capsys.readouterr().err
        assert "already exists and holds files; pass --overwrite" in err and err.count("\n") == 1
        assert [f.name for f in project.iterdir()] == ["notes.txt"]  # untouched
    # --overwrite never deletes the source it reads from
    for args in (["export-hf", "--model", str(folder), "--out", str(folder), "--overwrite"],
                 ["export-hf", "--model", str(folder), "--out", str(tmp_path), "--overwrite"]):
        assert cli(args) == 2
        assert "which this command reads" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == files
    assert cli(["export-hf", "--model", str(folder), "--out", str(project), "--overwrite"]) == 0
    assert (project / "config.json").is_file() and not (project / "notes.txt").exists()


def test_import_hf_of_a_padded_vocabulary_warns(tmp_path, tokenizer, cli, capsys):
    """A BERT whose embedding table is larger than its tokenizer (padded, as some published models are): the
    ids past the tokenizer have no text, and the import says so."""
    torch.manual_seed(3)
    config = hf_config(tokenizer)
    config.vocab_size = tokenizer.vocab_size + 6
    src = tmp_path / "padded"
    transformers.BertForMaskedLM(config).save_pretrained(src)
    tokenizer.save(src)
    capsys.readouterr()
    assert cli(["import-hf", "--from", str(src), "--out", str(tmp_path / "ours")]) == 0
    err = capsys.readouterr().err
    assert f"vocab_size {tokenizer.vocab_size + 6} is above its tokenizer's {tokenizer.vocab_size}" in err
    assert "generation never emits them" in err
