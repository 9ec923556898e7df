"""Shards: contents equal the tokenizer's output, parallel == serial, up-to-date and rebuild, atomicity."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

import masklm.data.shards as shards
from masklm.data.shards import ShardedCorpus, prepare_shards, token_dtype
from masklm.errors import DataError
from masklm.tokenizer import train_tokenizer, word_starts


@pytest.fixture
def corpus_file(tmp_path, documents):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(documents) + "\n")
    return path


def build(corpus_file, tokenizer, out, **kwargs):
    messages = []
    manifest = prepare_shards([str(corpus_file)], tokenizer, out, log=messages.append, **kwargs)
    return manifest, messages


def test_shards_hold_exactly_the_encoded_documents(tmp_path, corpus_file, documents, bpe_tokenizer):
    manifest, _ = build(corpus_file, bpe_tokenizer, tmp_path / "out", num_workers=1)
    corpus = ShardedCorpus(tmp_path / "out")
    assert corpus.num_documents == len(documents) == manifest["num_documents"]
    encodings = bpe_tokenizer.encode_batch(documents)
    assert corpus.num_tokens == sum(len(e.ids) for e in encodings) == manifest["num_tokens"]
    assert corpus.doc_lengths.dtype == np.int64
    assert np.array_equal(corpus.doc_lengths, [len(e.ids) for e in encodings])
    for i in (0, 17, len(documents) - 1):
        assert corpus.document(i).tolist() == encodings[i].ids  # stored as [CLS] doc [SEP]
        assert np.array_equal(corpus.word_starts(i), word_starts(encodings[i], documents[i]))
    assert corpus.vocab_size == bpe_tokenizer.vocab_size
    assert corpus.tokenizer_fingerprint == bpe_tokenizer.fingerprint()
    assert manifest["dtype"] == "uint16"
    assert (tmp_path / "out" / "tokens-00000.bin").stat().st_size == 2 * corpus.num_tokens
    (source,) = manifest["source_files"]
    assert source["size"] == corpus_file.stat().st_size and len(source["sha256"]) == 64
    assert source["mtime_ns"] == corpus_file.stat().st_mtime_ns
    assert manifest["corpus_stats"]["documents"] == len(documents)
    assert manifest["masklm_version"] and manifest["tokenizer_kind"] == "bpe"


def test_unknown_tokens_are_counted_and_a_corpus_the_tokenizer_cannot_spell_is_reported(tmp_path, documents,
                                                                                       wordpiece_tokenizer):
    """Text whose characters the tokenizer lacks becomes [UNK]: the manifest counts them, the last line says
    the share, and past 1% another line says what reads such text (a tokenizer trained on it)."""
    plain = tmp_path / "plain.txt"
    plain.write_text("\n\n".join(documents[:20]) + "\n")
    manifest, messages = build(plain, wordpiece_tokenizer, tmp_path / "plain", num_workers=1)
    assert manifest["num_unknown_tokens"] == 0 and "0.00% [UNK]" in messages[-1]
    foreign = tmp_path / "foreign.txt"  # 5 documents of Chinese words among 20 of the tokenizer's own
    foreign.write_text("\n\n".join(documents[:20] + ["公司 利润 大幅 下降 股价 下跌"] * 5) + "\n")
    manifest, messages = build(foreign, wordpiece_tokenizer, tmp_path / "foreign", num_workers=1)
    encoded = wordpiece_tokenizer.encode_batch(documents[:20] + ["公司 利润 大幅 下降 股价 下跌"] * 5)
    unknown = sum(e.ids.count(wordpiece_tokenizer.unk_id) for e in encoded)
    assert manifest["num_unknown_tokens"] == unknown >= 30  # six words a document, each one [UNK]
    rate = unknown / manifest["num_tokens"]
    assert f"{rate:.2%} [UNK]" in messages[-2]
    assert messages[-1].startswith(f"the corpus {foreign}: {rate:.1%} of its {manifest['num_tokens']:,} tokens are "
                                   "[UNK]") and "masklm tokenizer train" in messages[-1]


def test_parallel_workers_match_serial(tmp_path, corpus_file, wordpiece_tokenizer, monkeypatch):
    monkeypatch.setattr(shards, "CHUNK_DOCUMENTS", 7)  # several chunks in flight across 2 workers
    build(corpus_file, wordpiece_tokenizer, tmp_path / "serial", num_workers=1)
    build(corpus_file, wordpiece_tokenizer, tmp_path / "parallel", num_workers=2)
    for name in ("tokens-00000.bin", "word_starts-00000.bin", "doc_offsets.npy"):
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "parallel" / name).read_bytes()


def test_token_dtype():
    assert token_dtype(300) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_documents_never_straddle_shards(tmp_path, corpus_file, documents, wordpiece_tokenizer):
    manifest, _ = build(corpus_file, wordpiece_tokenizer, tmp_path / "out", num_workers=1, shard_tokens=100)
    corpus = ShardedCorpus(tmp_path / "out")
    assert len(manifest["shards"]) > 3
    starts = {s["start"] for s in manifest["shards"]}
    assert starts <= set(corpus.doc_offsets.tolist())
    encodings = wordpiece_tokenizer.encode_batch(documents)
    assert all(corpus.document(i).tolist() == e.ids for i, e in enumerate(encodings))
    flat = np.concatenate([e.ids for e in encodings])
    positions = np.array([0, 5, corpus.num_tokens - 1, 150, 99, 100, 101])
    assert np.array_equal(corpus.gather(positions)[0], flat[positions])


def test_rerun_is_a_no_op_and_changes_trigger_rebuild(tmp_path, corpus_file, documents, wordpiece_tokenizer):
    out = tmp_path / "out"
    first, _ = build(corpus_file, wordpiece_tokenizer, out, num_workers=1)
    mtime = (out / "tokens-00000.bin").stat().st_mtime_ns
    again, messages = build(corpus_file, wordpiece_tokenizer, out, num_workers=1)
    assert again == first and any("up to date" in m for m in messages)
    assert (out / "tokens-00000.bin").stat().st_mtime_ns == mtime
    # Touching the file without changing it is still up to date (the sha256 matches).
    os.utime(corpus_file, ns=(1, 1))
    _, messages = build(corpus_file, wordpiece_tokenizer, out, num_workers=1)
    assert any("up to date" in m for m in messages)
    # A changed corpus is rebuilt.
    with open(corpus_file, "a") as handle:
        handle.write("\nanother river document\n")
    changed, messages = build(corpus_file, wordpiece_tokenizer, out, num_workers=1)
    assert not any("up to date" in m for m in messages)
    assert changed["num_documents"] == len(documents) + 1 == ShardedCorpus(out).num_documents
    # A changed tokenizer is rebuilt.
    other = train_tokenizer(documents, kind="wordpiece", vocab_size=80, min_frequency=1)
    rebuilt, messages = build(corpus_file, other, out, num_workers=1)
    assert not any("up to date" in m for m in messages)
    assert rebuilt["tokenizer_fingerprint"] == other.fingerprint() == ShardedCorpus(out).tokenizer_fingerprint
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temp or old folders left


def test_failed_build_leaves_nothing_and_keeps_the_old_folder(tmp_path, corpus_file, wordpiece_tokenizer, monkeypatch):
    def explode(self, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(shards._ShardWriter, "add", explode)
    with pytest.raises(KeyboardInterrupt):
        build(corpus_file, wordpiece_tokenizer, tmp_path / "new", num_workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]
    monkeypatch.undo()
    good, _ = build(corpus_file, wordpiece_tokenizer, tmp_path / "new", num_workers=1)
    corpus_file.write_text("changed text\n")
    monkeypatch.setattr(shards._ShardWriter, "add", explode)
    with pytest.raises(KeyboardInterrupt):
        build(corpus_file, wordpiece_tokenizer, tmp_path / "new", num_workers=1)
    assert ShardedCorpus(tmp_path / "new").num_documents == good["num_documents"]


def test_incomplete_or_missing_folders_raise(tmp_path, corpus_file, wordpiece_tokenizer):
    with pytest.raises(DataError, match="not found"):
        ShardedCorpus(tmp_path / "missing")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "tokens-00000.bin").write_bytes(b"\0\0")
    with pytest.raises(DataError, match="manifest"):
        ShardedCorpus(tmp_path / "partial")
    out = tmp_path / "out"
    build(corpus_file, wordpiece_tokenizer, out, num_workers=1)
    with open(out / "tokens-00000.bin", "r+b") as handle:
        handle.truncate(10)
    with pytest.raises(DataError, match="truncated"):
        ShardedCorpus(out)
    _, messages = build(corpus_file, wordpiece_tokenizer, out, num_workers=1)  # a damaged folder is rebuilt
    assert not any("up to date" in m for m in messages) and ShardedCorpus(out).num_tokens > 10


def test_refuses_to_overwrite_a_foreign_folder_and_empty_corpus(tmp_path, corpus_file, wordpiece_tokenizer):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not a shard folder"):
        build(corpus_file, wordpiece_tokenizer, tmp_path / "mine")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no documents"):
        build(empty, wordpiece_tokenizer, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_pickled_corpus_reopens_its_memmaps(tmp_path, corpus_file, wordpiece_tokenizer):
    build(corpus_file, wordpiece_tokenizer, tmp_path / "out", num_workers=1)
    corpus = ShardedCorpus(tmp_path / "out")
    blob = pickle.dumps(corpus)
    assert len(blob) < corpus.num_tokens  # no token data travels
    assert np.array_equal(pickle.loads(blob).document(3), corpus.document(3))


def test_cli_data_prepare(cli, capsys, tmp_path, corpus_file, wordpiece_tokenizer):
    wordpiece_tokenizer.save(tmp_path / "tok")
    args = ["data", "prepare", "--corpus", str(corpus_file), "--tokenizer", str(tmp_path / "tok"),
            "--out", str(tmp_path / "out"), "--workers", "2", "--json"]
    assert cli(args) == 0
    captured = capsys.readouterr()
    manifest = json.loads(captured.out)
    assert manifest["num_tokens"] == ShardedCorpus(tmp_path / "out").num_tokens
    assert f"{manifest['num_tokens']:,} tokens (0.00% [UNK]) from" in captured.err and "invalid" not in captured.err
    assert cli(args) == 0 and "up to date" in capsys.readouterr().err
    assert cli(args[:5] + [str(tmp_path / "no-tokenizer")] + args[6:]) == 2
    assert "no tokenizer.json" in capsys.readouterr().err


def test_cli_data_prepare_never_replaces_what_it_did_not_make(cli, capsys, tmp_path, corpus_file,
                                                               wordpiece_tokenizer):
    wordpiece_tokenizer.save(tmp_path / "tok")
    ckpt = tmp_path / "step-10"  # a checkpoint folder also holds a manifest.json
    ckpt.mkdir()
    (ckpt / "manifest.json").write_text('{"step": 10}')
    (ckpt / "model.safetensors").write_bytes(b"weights")
    args = ["data", "prepare", "--corpus", str(corpus_file), "--tokenizer", str(tmp_path / "tok"), "--out"]
    for flags in ([], ["--overwrite"]):
        assert cli(args + [str(ckpt), *flags]) == 2
        assert "is not a shard folder" in capsys.readouterr().err
    assert sorted(f.name for f in ckpt.iterdir()) == ["manifest.json", "model.safetensors"]
    # shards of other files are rebuilt only with --overwrite
    assert cli(args + [str(tmp_path / "out")]) == 0
    before = (tmp_path / "out" / "manifest.json").read_bytes()
    other = tmp_path / "other.txt"
    other.write_text("a different corpus\n\nwith two documents\n")
    changed = ["data", "prepare", "--corpus", str(other), "--tokenizer", str(tmp_path / "tok"), "--out",
               str(tmp_path / "out")]
    capsys.readouterr()
    assert cli(changed) == 2
    err = capsys.readouterr().err
    assert "pass --overwrite to rebuild" in err and err.count("\n") == 1
    assert (tmp_path / "out" / "manifest.json").read_bytes() == before
    assert cli(changed + ["--overwrite"]) == 0 and ShardedCorpus(tmp_path / "out").num_documents == 2


@pytest.mark.slow
def test_ctrl_c_while_workers_tokenize_stops_in_one_line(tmp_path, wordpiece_tokenizer):
    """Ctrl-C reaches the whole process group: the pool's workers leave it to the parent, which stops the
    pool, leaves no folder and says "interrupted" with exit 130 (workers printed their own tracebacks)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    words = ["river", "stone", "light", "house", "field", "water", "grass", "cloud"]
    big = tmp_path / "big.txt"  # about 20 MB: several seconds of tokenizing on two workers
    with open(big, "w") as f:
        for i in range(40_000):
            f.write(" ".join(words[(i * 7 + j) % 8] for j in range(80)) + "\n\n")
    wordpiece_tokenizer.save(tmp_path / "tok")
    out = tmp_path / "shards"
    proc = subprocess.Popen([sys.executable, "-m", "masklm", "data", "prepare", "--corpus", str(big), "--tokenizer",
                             str(tmp_path / "tok"), "--out", str(out), "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 60
    while not any(p.name.startswith(".shards.tmp-") and any(p.iterdir()) for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()
        time.sleep(0.05)
    time.sleep(0.3)  # the workers are busy
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "masklm: interrupted" and "Traceback" not in err, err
    assert "ForkPoolWorker" not in err and not out.exists()
    assert not any(p.name.startswith(".shards.") for p in tmp_path.iterdir())
