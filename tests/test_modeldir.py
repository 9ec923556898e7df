"""Model folders: round trip, atomic replacement (``masklm.files``), the saved version, and one-line errors for
every broken folder."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import masklm
from masklm import modeldir
from masklm.config import ModelConfig
from masklm.errors import ModelDirError
from masklm.files import atomic_dir, atomic_file
from masklm.inference.pipeline import Pipeline
from masklm.modeldir import load_model_dir, read_masklm_version, save_model_dir
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
        "checksums.json", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "training_args.json"]
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


def test_every_file_of_a_folder_gets_the_permissions_of_a_new_file(tmp_path, model, tokenizer):
    """safetensors writes its file private (0600); a folder's weights must be as readable as its config,
    here under a group-readable umask and under a private one."""
    import os

    for umask in (0o022, 0o077):
        old = os.umask(umask)
        try:
            folder = save_model_dir(tmp_path / f"m{umask:o}", model, tokenizer)
        finally:
            os.umask(old)
        modes = {f.name: f.stat().st_mode & 0o777 for f in folder.iterdir()}
        assert set(modes.values()) == {0o666 & ~umask}, modes


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


def test_atomic_dir_swaps_the_folder_in_only_when_complete(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        assert tmp.parent == out.parent.absolute() and tmp.name.startswith(".out.tmp-") and not out.exists()
        (tmp / "a.txt").write_text("first")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    with atomic_dir(out) as tmp:  # an existing folder is replaced as a whole
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    with pytest.raises(RuntimeError, match="boom"), atomic_dir(out) as tmp:
        (tmp / "c.txt").write_text("half")
        raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]  # the old folder is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old siblings left
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError), atomic_dir(tmp_path / "file") as tmp:
        pass
    assert (tmp_path / "file").read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["file", "out"]


def test_atomic_file_leaves_the_old_file_on_error(tmp_path):
    out = tmp_path / "sub" / "x.json"
    with atomic_file(out) as tmp:
        tmp.write_text("new")
    assert out.read_text() == "new"
    with pytest.raises(OSError), atomic_file(out) as tmp:
        tmp.write_text("half")
        raise OSError("disk full")
    assert out.read_text() == "new" and sorted(p.name for p in out.parent.iterdir()) == ["x.json"]


def test_the_folder_version_is_read_from_config_json(saved, tokenizer):
    assert read_masklm_version(saved) == masklm.__version__
    assert masklm.load(saved).masklm_version == masklm.__version__  # loading drops the key from the config
    assert Pipeline(load_model_dir(saved)[0], tokenizer).masklm_version is None  # no folder, no version


def test_fine_tuned_folders_are_loaded_above_modeldir(tmp_path, saved):
    data = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps(data | {"task": {"type": "regression", "labels": ["y"],
                                                                   "num_labels": 1}}))
    with pytest.raises(ModelDirError, match="fine-tuned model folder.*masklm.load"):
        load_model_dir(saved)
    # modeldir only reads and writes folders: it imports neither the fine-tuning code nor the LTG import
    tree = ast.parse(Path(modeldir.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m.startswith(("masklm.finetune", "masklm.hf.ltg_import", "masklm.inference"))}


def test_a_folder_never_says_a_longer_input_than_its_positions(tmp_path, model, tokenizer):
    """A tokenizer that allows 512 tokens beside a model with 64 positions: the folder says 64, where Hugging
    Face's tokenizer truncates (a longer input crashed transformers' pipeline)."""
    assert tokenizer.model_max_length > model.config.max_position_embeddings == 64
    folder = save_model_dir(tmp_path / "m", model, tokenizer)
    assert json.loads((folder / "tokenizer_config.json").read_text())["model_max_length"] == 64
    assert tokenizer.model_max_length > 64  # the caller's tokenizer is left as it was
