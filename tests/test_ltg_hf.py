"""LTG-BERT / GPT-BERT folders load in transformers (trust_remote_code), and ``masklm import-ltg``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import approx, close, forward_terms
from safetensors.torch import save_file
from tokenizers import Tokenizer as Backend
from tokenizers import models, pre_tokenizers, processors, trainers

from masklm.cli import main
from masklm.config import ModelConfig
from masklm.hf.ltg_reference import export_reference_state_dict
from masklm.hf.ltg_remote import AUTO_MAP, REMOTE_FILES
from masklm.modeldir import load_model_dir, save_model_dir
from masklm.models.ltg_bert import LtgBertForMaskedLM
from masklm.tokenizer import train_tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = ["the cat sat on the mat", "a dog ran far away from home", "the river runs to the sea"] * 10
V = 64


def tiny_model(arch: str, seed: int = 0, **overrides) -> LtgBertForMaskedLM:
    torch.manual_seed(seed)
    config = ModelConfig(arch=arch, vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=48, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                         **overrides)
    model = LtgBertForMaskedLM(config)
    with torch.no_grad():  # move away from the structured init (zero biases, one-hot DWA, unit LNs)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, V, (3, 11), generator=g)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=V - 4, min_frequency=1)


@pytest.mark.parametrize("arch,split", [("ltg-bert", "contiguous"), ("gpt-bert", "contiguous"),
                                        ("ltg-bert", "interleaved")])
def test_folder_loads_in_transformers(tmp_path, tokenizer, arch, split):
    model = tiny_model(arch, position_split=split)
    folder = save_model_dir(tmp_path / "m", model, tokenizer)
    for name in REMOTE_FILES:
        assert (folder / name).is_file()
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    assert config["model_type"] == "masklm-ltg"
    assert config["architectures"] == ["MaskLMLtgForMaskedLM"]

    ids, mask = batch()
    n = forward_terms(model.config, ids.shape[1])
    with torch.no_grad():
        ours = model(ids, attention_mask=mask)
        hf = transformers.AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(hf).__name__ == "MaskLMLtgForMaskedLM"
        out = hf(input_ids=ids, attention_mask=mask)
        assert out.logits.shape == (3, 11, V)
        assert close(out.logits, ours.logits, n=n)
        base = transformers.AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(base).__name__ == "MaskLMLtgModel"
        hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state
        assert close(hidden, ours.hidden_states, n=n)
        # labels give the mean CE over the selected positions, as masklm's does
        labels = torch.full_like(ids, -100)
        labels[0, 2], labels[1, 4] = 7, 9
        loss_terms = forward_terms(model.config, ids.shape[1], softmax=True)  # cross-entropy over V
        assert hf(input_ids=ids, attention_mask=mask, labels=labels).loss.item() == approx(
            model(ids, attention_mask=mask, labels=labels).loss.item(), n=loss_terms)

    loaded, loaded_config, _ = load_model_dir(folder)
    assert loaded_config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(ids, attention_mask=mask).logits, ours.logits)  # same weights, same code


# --- import-ltg ------------------------------------------------------------------------------------

def reference_tokenizer_json(path, specials: list[str]) -> None:
    backend = Backend(models.WordPiece(unk_token=specials[0], continuing_subword_prefix="##"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordPieceTrainer(vocab_size=V - 4, min_frequency=1, special_tokens=specials,
                                        show_progress=False)
    backend.train_from_iterator(TEXTS, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{specials[1]} $A {specials[2]}", special_tokens=[(specials[1], 1), (specials[2], 2)])
    backend.save(str(path))


def write_reference(tmp_path, model: LtgBertForMaskedLM, fmt: str = "bin", **config_changes):
    c = model.config
    ref = export_reference_state_dict(model.state_dict(), c)
    if fmt == "bin":
        weights = tmp_path / "pytorch_model.bin"
        torch.save({"module." + k: v for k, v in ref.items()}, weights)  # DDP prefix, as some dumps have
    else:
        weights = tmp_path / "model.safetensors"
        save_file({k: v.clone().contiguous() for k, v in ref.items()}, str(weights))
    config = {"attention_probs_dropout_prob": 0.1, "hidden_dropout_prob": 0.1, "hidden_size": c.hidden_size,
              "intermediate_size": c.intermediate_size, "max_position_embeddings": 512,
              "position_bucket_size": c.position_bucket_size, "layer_norm_eps": c.layer_norm_eps,
              "num_attention_heads": c.num_attention_heads, "num_hidden_layers": c.num_hidden_layers,
              "vocab_size": c.vocab_size, **config_changes}
    (tmp_path / "config.json").write_text(json.dumps(config))
    gpt = c.arch == "gpt-bert"
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<mask>"] if gpt else ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    reference_tokenizer_json(tmp_path / "tokenizer.json", specials)
    return weights, tmp_path / "config.json", tmp_path / "tokenizer.json"


@pytest.mark.parametrize("arch,fmt,split", [("ltg-bert", "bin", "contiguous"), ("gpt-bert", "bin", "contiguous"),
                                            ("gpt-bert", "safetensors", "contiguous"),
                                            ("ltg-bert", "bin", "interleaved")])
def test_import_ltg(tmp_path, capsys, arch, fmt, split):
    model = tiny_model(arch, seed=3, position_split=split)
    weights, config, tok = write_reference(tmp_path, model, fmt)
    out = tmp_path / "imported"
    args = ["import-ltg", "--weights", str(weights), "--config", str(config), "--tokenizer", str(tok),
            "--out", str(out)]
    if split == "interleaved":
        args += ["--position-split", "interleaved"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == str(out)
    loaded, loaded_config, tokenizer = load_model_dir(out)
    assert loaded_config.arch == arch
    assert loaded_config.position_split == split
    assert loaded_config.attention_gate == (arch == "gpt-bert") and loaded_config.dwa == (arch == "gpt-bert")
    expected = ("<pad>", "<unk>", "<s>", "</s>", "<mask>") if arch == "gpt-bert" else \
        ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    assert (tokenizer.pad_token, tokenizer.unk_token, tokenizer.cls_token, tokenizer.sep_token,
            tokenizer.mask_token) == expected
    assert tokenizer.pad_id == 3 and tokenizer.mask_id == 4
    assert objectives_of(out) == (["mntp", "clm"] if arch == "gpt-bert" else ["mlm"])  # random weights: no clear reading
    ids, mask = batch()
    n = forward_terms(model.config, ids.shape[1])
    with torch.no_grad():
        assert close(loaded(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits, n=n)
        hf = transformers.AutoModelForMaskedLM.from_pretrained(out, trust_remote_code=True).eval()
        hf_logits = hf(input_ids=ids, attention_mask=mask).logits
        assert close(hf_logits, model(ids, attention_mask=mask).logits, n=n)


def _bad_shape(tmp_path, files):
    weights, config, tok = files
    data = json.loads(config.read_text())
    data["intermediate_size"] = 40
    config.write_text(json.dumps(data))


def _missing_weights(tmp_path, files):
    files[0].unlink()


def _bad_name(tmp_path, files):
    state = torch.load(files[0], weights_only=True)
    state["module.transformer.layers.0.attention.bogus.weight"] = torch.zeros(2)
    torch.save(state, files[0])


def _bad_tokenizer(tmp_path, files):
    reference_tokenizer_json(files[2], ["<oov>", "[CLS]", "[SEP]", "[PAD]", "[MASK]"])


def _bad_config_json(tmp_path, files):
    files[1].write_text("{not json")


def _config_lacks_key(tmp_path, files):
    data = json.loads(files[1].read_text())
    del data["hidden_size"]
    files[1].write_text(json.dumps(data))


def _not_a_checkpoint(tmp_path, files):
    files[0].write_bytes(b"garbage")


@pytest.mark.parametrize("breakage,message", [
    (_bad_shape, "intermediate_size"), (_missing_weights, "does not exist"), (_bad_name, "bogus"),
    (_bad_tokenizer, "unk_token"), (_bad_config_json, "not valid JSON"), (_config_lacks_key, "hidden_size"),
    (_not_a_checkpoint, "cannot read weights"),
])
def test_import_ltg_bad_input_exit_2(tmp_path, capsys, breakage, message):
    files = write_reference(tmp_path, tiny_model("ltg-bert"))
    breakage(tmp_path, files)
    rc = main(["import-ltg", "--weights", str(files[0]), "--config", str(files[1]), "--tokenizer", str(files[2]),
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("masklm: error:") and message in err, err
    assert not (tmp_path / "out").exists()


def counting_reference(tmp_path, arch: str, objective: str, position_split: str) -> list[str]:
    """A model trained here on counting sequences "w7 w8 w9 ...", written as a reference checkpoint; the
    import-ltg arguments for it, without --out. A masked word is told by its neighbours, so the model must
    use the relative-position terms (which the wrong split scrambles)."""
    import random

    from masklm.modeldir import load_model_dir
    from masklm.training.config import TrainConfig
    from masklm.training.trainer import train

    rng = random.Random(0)
    docs = []
    for _ in range(200):
        start = rng.randrange(40)
        docs.append(" ".join(f"w{(start + i) % 40}" for i in range(rng.randint(20, 40))))
    (tmp_path / "c.txt").write_text("\n\n".join(docs))
    run = train(TrainConfig(
        arch=arch, objective=objective, out=str(tmp_path / "run"), corpus=[str(tmp_path / "c.txt")],
        vocab_size=200, seq_len=32, batch_size=16, max_steps=150, lr=3e-3, progress=False, log_every=50,
        model={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
               "position_split": position_split, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}))
    model, _, _ = load_model_dir(run / "final")
    c = model.config
    ref = tmp_path / "ref"
    ref.mkdir()
    torch.save(export_reference_state_dict(model.state_dict(), c), ref / "model.bin")
    (ref / "config.json").write_text(json.dumps({
        "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size, "vocab_size": c.vocab_size,
        "num_attention_heads": c.num_attention_heads, "num_hidden_layers": c.num_hidden_layers,
        "layer_norm_eps": c.layer_norm_eps, "position_bucket_size": 32, "max_position_embeddings": 512}))
    return ["import-ltg", "--weights", str(ref / "model.bin"), "--config", str(ref / "config.json"),
            "--tokenizer", str(run / "final" / "tokenizer.json"), "--check-text", str(tmp_path / "c.txt")]


def objectives_of(folder: Path) -> list[str]:
    return json.loads((folder / "training_args.json").read_text())["objectives"]


def test_import_ltg_refuses_the_wrong_position_split(tmp_path, capsys):
    """§2.4's check: weights trained with the interleaved split have a much lower MLM loss read that way."""
    args = counting_reference(tmp_path, "ltg-bert", "mlm", "interleaved")
    assert main([*args, "--out", str(tmp_path / "wrong")]) == 2  # contiguous is the default
    err = capsys.readouterr().err
    assert "it was trained with the interleaved split; pass --position-split interleaved" in err
    assert not (tmp_path / "wrong").exists()
    assert main([*args, "--out", str(tmp_path / "right"), "--position-split", "interleaved"]) == 0
    err = capsys.readouterr().err
    assert "masked-LM loss on the check text" in err and "objectives mlm (from the loss check" in err
    assert objectives_of(tmp_path / "right") == ["mlm"]
    assert main([*args, "--out", str(tmp_path / "forced"), "--no-split-check"]) == 0


def test_import_ltg_reads_an_mntp_checkpoint_one_position_left(tmp_path, capsys):
    """GPT-BERT's MNTP weights predict a mask from the position before it (§6): the loss check finds that
    reading, records it in training_args.json, and the loaded pipeline reads masks there."""
    import masklm

    args = counting_reference(tmp_path, "gpt-bert", "mntp", "contiguous")
    assert main([*args, "--out", str(tmp_path / "found")]) == 0
    err = capsys.readouterr().err
    losses = re.search(r"contiguous ([\d.]+) / ([\d.]+)", err)
    assert float(losses.group(2)) * 1.25 < float(losses.group(1)), err  # one position left is clearly better
    assert "objectives mntp, clm (from the loss check" in err
    assert objectives_of(tmp_path / "found") == ["mntp", "clm"] and masklm.load(tmp_path / "found").mask_shift == 1
    assert main([*args, "--out", str(tmp_path / "told"), "--objectives", "mlm"]) == 0
    assert objectives_of(tmp_path / "told") == ["mlm"] and masklm.load(tmp_path / "told").mask_shift == 0
    assert main([*args, "--out", str(tmp_path / "bad"), "--objectives", "mlm,nsp"]) == 2
    assert "--objectives 'mlm,nsp'" in capsys.readouterr().err and not (tmp_path / "bad").exists()
