"""Embeddings: shapes, normalisation, pooling against a manual computation, batching, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import close, forward_terms

import masklm
from masklm.cli import main
from masklm.config import ModelConfig
from masklm.errors import InputError
from masklm.modeldir import save_model_dir
from masklm.models import build_model
from masklm.tokenizer import train_tokenizer

TEXTS = ["the cat sat on the mat .", "a dog", "", "the bird flew over the house and then the dog ran ."]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    tokenizer = train_tokenizer(TEXTS * 5, kind="wordpiece", vocab_size=80, min_frequency=1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="ltg-bert", vocab_size=tokenizer.vocab_size, hidden_size=32,
                                    num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    max_position_embeddings=32))
    return save_model_dir(tmp_path_factory.mktemp("emb") / "model", model, tokenizer)


@pytest.fixture(scope="module")
def pipe(model_dir):
    return masklm.load(model_dir)


def manual(pipe, text: str, pooling: str) -> np.ndarray:
    """One text alone, no padding: mean over every position ([CLS]/[SEP] included) or position 0."""
    ids = torch.tensor([pipe.tokenizer.encode(text).ids])
    with torch.no_grad():
        hidden = pipe.model.encode(ids)[0]  # [T, D]
    return (hidden.mean(0) if pooling == "mean" else hidden[0]).numpy()


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooling_equals_manual_and_normalises(pipe, pooling):
    raw = pipe.embed(TEXTS, pooling=pooling, normalize=False)
    assert isinstance(raw, np.ndarray) and raw.dtype == np.float32
    assert raw.shape == (len(TEXTS), pipe.config.hidden_size)
    n = forward_terms(pipe.config)
    for text, vec in zip(TEXTS, raw):
        assert close(vec, manual(pipe, text, pooling), n=n)
    unit = pipe.embed(TEXTS, pooling=pooling)
    dim = pipe.config.hidden_size  # a norm sums this many squares
    assert close(np.linalg.norm(unit, axis=1), np.ones(len(TEXTS)), n=dim)
    assert close(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), n=dim)
    assert pipe.embed(TEXTS[0], pooling=pooling).shape == (pipe.config.hidden_size,)


def test_mean_and_cls_differ_and_batching_is_invariant(pipe):
    mean = pipe.embed(TEXTS, pooling="mean")
    assert not np.allclose(mean, pipe.embed(TEXTS, pooling="cls"), atol=1e-3)
    n = forward_terms(pipe.config)
    for budget in (1, 17, 10**6):  # one text per batch, mixed, everything in one padded batch
        assert close(pipe.embed(TEXTS, batch_tokens=budget), mean, n=n)


def test_bad_input(pipe):
    with pytest.raises(InputError, match="maximum of 32"):
        pipe.embed(["fine", "the cat " * 40])
    with pytest.raises(InputError, match="unknown pooling"):
        pipe.embed("x", pooling="max")
    with pytest.raises(InputError, match="no texts"):
        pipe.embed([])
    with pytest.raises(InputError, match="not a string"):
        pipe.embed([None])


def test_cli(model_dir, pipe, tmp_path, capsys):
    want = pipe.embed(TEXTS[:2])
    n = forward_terms(pipe.config)
    out = tmp_path / "e.npy"
    assert main(["embed", "--model", str(model_dir), "--out", str(out), *TEXTS[:2]]) == 0
    assert close(np.load(out), want, n=n)
    saved = out.read_bytes()  # an existing file is replaced only with --overwrite
    assert main(["embed", "--model", str(model_dir), "--out", str(out), "a"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err and out.read_bytes() == saved
    assert main(["embed", "--model", str(model_dir), "--out", str(out), "--overwrite", *TEXTS[:2]]) == 0
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in TEXTS[:2]) + "\n")
    out = tmp_path / "e.jsonl"
    assert main(["embed", "--model", str(model_dir), "--input", str(tmp_path / "in.jsonl"), "--out", str(out),
                 "--pooling", "cls", "--no-normalize"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == TEXTS[:2]
    assert close([r["embedding"] for r in rows], pipe.embed(TEXTS[:2], "cls", False), n=n)
    before = (tmp_path / "in.jsonl").read_bytes()  # never over the input it reads, even with --overwrite
    assert main(["embed", "--model", str(model_dir), "--input", str(tmp_path / "in.jsonl"),
                 "--out", str(tmp_path / "in.jsonl"), "--overwrite"]) == 2
    assert "which this command reads" in capsys.readouterr().err and (tmp_path / "in.jsonl").read_bytes() == before
    capsys.readouterr()
    assert main(["embed", "--model", str(model_dir), "a dog"]) == 0  # JSONL on stdout
    row = json.loads(capsys.readouterr().out)
    assert close(row["embedding"], want[1], n=n)
    assert main(["embed", "--model", str(model_dir), "--out", str(tmp_path / "x.csv"), "a"]) == 2
    assert ".npy or .jsonl" in capsys.readouterr().err
    assert main(["embed", "--model", str(model_dir), "--out", str(tmp_path / "y.npy"), "the cat " * 40]) == 2
    assert "maximum" in capsys.readouterr().err and not (tmp_path / "y.npy").exists()


def test_cli_says_how_many_blank_lines_it_left_out(model_dir, pipe, tmp_path, capsys):
    """Rows of the .npy follow the non-blank lines; a user matching them to line numbers is told."""
    (tmp_path / "in.txt").write_text(f"{TEXTS[0]}\n\n  \n{TEXTS[1]}\n")
    out = tmp_path / "e.npy"
    assert main(["embed", "--model", str(model_dir), "--input", str(tmp_path / "in.txt"), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"input file {tmp_path / 'in.txt'}: 2 blank lines skipped; output row i is its i-th non-blank line" in err
    assert close(np.load(out), pipe.embed(TEXTS[:2]), n=forward_terms(pipe.config))
    (tmp_path / "dense.txt").write_bytes(f"\ufeff{TEXTS[0]}\r\n{TEXTS[1]}\r\n".encode())  # a BOM and CRLF, as Windows
    assert main(["embed", "--model", str(model_dir), "--input", str(tmp_path / "dense.txt")]) == 0
    captured = capsys.readouterr()
    assert "skipped" not in captured.err
    assert [json.loads(line)["text"] for line in captured.out.splitlines()] == TEXTS[:2]  # the mark is no text


def test_cli_names_an_input_that_holds_no_text(model_dir, tmp_path, capsys):
    """An empty or blank --input is named in the one error line (embed and score read inputs alike)."""
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    (tmp_path / "empty.jsonl").write_text("")
    for command in ("embed", "score"):
        for name in ("blank.txt", "empty.jsonl"):
            path = tmp_path / name
            assert main([command, "--model", str(model_dir), "--input", str(path)]) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith(f"masklm: error: input file {path} holds no texts") and "\n" not in err
    assert not list(tmp_path.glob("*.npy"))


def test_cli_piped_into_a_reader_that_stops_early_ends_quietly(model_dir, tmp_path):
    """``masklm embed --input big.txt | head -1``: the reader closes the pipe after one line; the command
    stops with 141 (SIGPIPE's status) and no traceback."""
    import subprocess
    import sys

    texts = tmp_path / "many.txt"
    texts.write_text("\n".join(f"the dog {i} runs" for i in range(300)) + "\n")  # ~1 MB of JSONL: past a pipe's buffer
    proc = subprocess.Popen([sys.executable, "-m", "masklm", "embed", "--model", str(model_dir), "--input", str(texts)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = json.loads(proc.stdout.readline())
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert first["text"] == "the dog 0 runs" and "Traceback" not in err and "BrokenPipe" not in err
