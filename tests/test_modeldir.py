"""Model folders: round trip, atomic replacement, and one-line errors for every broken folder."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from masklm.config import ModelConfig
from masklm.errors import ModelDirError
from masklm.modeldir import load_model_dir, save_model_dir
from masklm.models import build_model


@pytest.fixture
def tokenizer(wordpiece_tokenizer):
    return wordpiece_tokenizer


@pytest.fixture
def model(tokenizer):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    return build_model(cfg)


@pytest.fixture
def saved(tmp_path, model, tokenizer):
    return save_model_dir(tmp_path / "final", model, tokenizer, {"lr": 0.001, "seed": 3})


def test_round_trip(saved, model, tokenizer):
    assert sorted(p.name for p in saved.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training_args.json"]
    config = json.loads((saved / "config.json").read_text())
    assert config["model_type"] == "bert" and config["masklm_version"] and config["hidden_size"] == 32
    assert json.loads((saved / "training_args.json").read_text()) == {"lr": 0.001, "seed": 3}
    assert set(load_file(str(saved / "model.safetensors"))) == set(model.state_dict())

    loaded, cfg, tok = load_model_dir(saved)
    assert not loaded.training and cfg == model.config
    assert tok.fingerprint() == tokenizer.fingerprint()
    for name, tensor in model.state_dict().items():  # bit-exact: a round trip stores the bytes
        assert torch.equal(loaded.state_dict()[name], tensor), name
    ids = torch.tensor([tokenizer.encode("hello world river").ids])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)  # same weights, same code: bit-exact


def test_save_replaces_existing_folder_atomically(tmp_path, saved, model, tokenizer, monkeypatch):
    (saved / "stale.txt").write_text("old")
    save_model_dir(saved, model, tokenizer)  # replace: old files gone, no training_args this time
    assert not (saved / "stale.txt").exists() and not (saved / "training_args.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # no temp or old siblings left

    before = (saved / "model.safetensors").read_bytes()
    monkeypatch.setattr(type(tokenizer), "save", lambda self, d: (_ for _ in ()).throw(OSError("disk full")))
    with torch.no_grad():
        model.cls.predictions.bias.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_model_dir(saved, model, tokenizer)
    assert (saved / "model.safetensors").read_bytes() == before  # the old folder is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_save_onto_a_file_is_refused(tmp_path, model, tokenizer):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ModelDirError, match="not a folder"):
        save_model_dir(target, model, tokenizer)
    assert target.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def _edit_config(folder, **changes):
    data = json.loads((folder / "config.json").read_text())
    data.update(changes)
    (folder / "config.json").write_text(json.dumps(data))


def _edit_weights(folder, fn):
    state = load_file(str(folder / "model.safetensors"))
    fn(state)
    save_file(state, str(folder / "model.safetensors"))


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda d: (d / "config.json").unlink(), "no config.json"),
        (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
        (lambda d: (d / "model.safetensors").write_bytes(b"garbage"), "not a readable safetensors"),
        (lambda d: (d / "tokenizer.json").unlink(), "no tokenizer.json"),
        (lambda d: _edit_config(d, arch="gpt9"), "unknown architecture 'gpt9'"),
        (lambda d: _edit_config(d, model_type="roberta", arch=None) or _drop_arch(d), "'roberta' model"),
        (lambda d: _edit_config(d, hidden_size=48), "has shape"),
        (lambda d: _edit_config(d, num_hidden_layers=3), "lacks tensor 'bert.encoder.layer.2"),
        (lambda d: _edit_weights(d, lambda s: s.pop("cls.predictions.bias")), "lacks tensor 'cls.predictions.bias'"),
        (lambda d: _edit_weights(d, lambda s: s.update(extra=torch.zeros(1))), "unexpected tensor 'extra'"),
        (lambda d: _edit_config(d, vocab_size=10), "tokenizer"),
    ],
)
def test_broken_folders_raise_one_line_errors(saved, breakage, message):
    breakage(saved)
    with pytest.raises(ModelDirError, match=message) as info:
        load_model_dir(saved)
    assert "\n" not in str(info.value)


def _drop_arch(folder):
    data = json.loads((folder / "config.json").read_text())
    data.pop("arch")
    (folder / "config.json").write_text(json.dumps(data))


def test_missing_folder(tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        load_model_dir(tmp_path / "nope")
