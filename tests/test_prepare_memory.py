"""Memory bounded by design (#12 point 5): long lines and documents are read in pieces, cut at whitespace
and counted; ``data prepare`` on a long single-line file stays under 1 GB resident.

The fast tests shrink ``MAX_PIECE`` so the cutting rules show on a few bytes; the slow one runs the CLI on
a generated 10 MB single-line file in a child process and reads the child's peak RSS. Before the pieces
(one document encoded whole) that file took ``data prepare`` to 1.85 GB (50 MB: past 7 GB).
"""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import masklm.data.corpus as corpus
import masklm.data.shards as shards
from masklm.cli import main
from masklm.data.corpus import CorpusStats, iter_documents
from masklm.data.shards import ShardedCorpus, prepare_shards
from masklm.tokenizer import train_tokenizer

WORDS = "the a cat dog bird sat ran flew on under over mat tree house and then".split()


@pytest.fixture
def small_pieces(monkeypatch):
    monkeypatch.setattr(corpus, "MAX_PIECE", 64)
    return 64


def _words(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(WORDS) for _ in range(n)]


def test_a_long_line_is_cut_at_whitespace_and_counted(tmp_path, small_pieces):
    words = _words(400)
    path = tmp_path / "one.txt"
    path.write_text("short first line\n" + " ".join(words) + "\n\nnext document\n")
    stats = CorpusStats()
    docs = list(iter_documents([str(path)], stats))
    assert docs[-1] == "next document"
    assert all(len(d) <= small_pieces for d in docs)
    # every word survives whole, in order: the cuts fall between words
    assert " ".join(d.replace("\n", " ") for d in docs[:-1]).split() == ["short", "first", "line"] + words
    assert (stats.split_lines, stats.split_documents) == (1, 1)
    assert stats.documents == len(docs) and stats.words == 3 + len(words) + 2
    assert "split 1 long lines and 1 long documents" in stats.summary()


def test_cuts_never_split_a_character_and_lines_without_spaces_are_cut_too(tmp_path, small_pieces):
    text = "é" * 100 + "ü" * 77          # 354 bytes of two-byte characters, no whitespace at all
    path = tmp_path / "u.txt"
    path.write_bytes((text + "\n").encode())
    stats = CorpusStats()
    docs = list(iter_documents([str(path)], stats))
    assert "".join(d.replace("\n", "") for d in docs) == text and len(docs) > 1   # nothing lost or replaced
    assert stats.bad_bytes == 0 and stats.split_lines == 1


def test_a_document_of_many_short_lines_is_cut_between_lines(tmp_path, small_pieces):
    lines = [" ".join(_words(3, seed=i)) for i in range(50)]
    path = tmp_path / "lines.txt.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(lines) + "\n")
    stats = CorpusStats()
    docs = list(iter_documents([str(path)], stats))
    assert [line for d in docs for line in d.split("\n")] == lines   # whole lines, in order
    assert all(len(d) <= small_pieces for d in docs) and len(docs) > 1
    assert (stats.split_lines, stats.split_documents) == (0, 1)


def test_jsonl_texts_are_cut_and_oversized_records_are_skipped_and_counted(tmp_path, small_pieces, monkeypatch):
    monkeypatch.setattr(corpus, "MAX_RECORD_BYTES", 4096)
    long_text = " ".join(_words(100))
    huge = " ".join(_words(2000, seed=1))
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ("short one", long_text, huge, "after")) + "\n")
    stats = CorpusStats()
    docs = list(iter_documents([str(path)], stats))
    assert docs[0] == "short one" and docs[-1] == "after"
    assert " ".join(docs[1:-1]).split() == long_text.split()
    assert all(len(d) <= small_pieces for d in docs)
    assert stats.skipped == {"record_too_long": 1} and stats.split_documents == 1
    assert any(w.startswith(f"{path}:3:") for w in stats.warnings)  # the line number of the huge record


def test_ordinary_corpora_read_exactly_as_before(tmp_path):
    """Below MAX_PIECE nothing is cut: documents, counts and shards are those of whole documents."""
    docs = [" ".join(_words(30, seed=i)) + "\n" + " ".join(_words(5, seed=-i)) for i in range(40)]
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(docs) + "\n")
    stats = CorpusStats()
    assert list(iter_documents([str(path)], stats)) == docs
    assert (stats.split_lines, stats.split_documents) == (0, 0)
    assert "split" not in stats.summary()


def test_chunks_are_bounded_by_characters_and_shards_do_not_depend_on_them(tmp_path, monkeypatch):
    texts = ["x" * n for n in (5, 5, 20, 1, 1, 1, 50)]
    assert [len(c) for c in shards._chunks(texts, 1000, chars=12)] == [2, 1, 3, 1]
    assert [len(c) for c in shards._chunks(texts, 2, chars=1000)] == [2, 2, 2, 1]
    tok = train_tokenizer([" ".join(_words(12, seed=i)) for i in range(100)], kind="wordpiece",
                          vocab_size=80, min_frequency=1)
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(" ".join(_words(40, seed=i)) for i in range(60)) + "\n")
    prepare_shards([str(path)], tok, tmp_path / "big", num_workers=1, log=lambda m: None)
    monkeypatch.setattr(shards, "CHUNK_CHARS", 300)   # many small chunks
    prepare_shards([str(path)], tok, tmp_path / "small", num_workers=2, log=lambda m: None)
    for name in ("tokens-00000.bin", "word_starts-00000.bin", "doc_offsets.npy"):
        assert (tmp_path / "big" / name).read_bytes() == (tmp_path / "small" / name).read_bytes()


def test_data_prepare_reports_the_split(tmp_path, small_pieces, capsys):
    tok = train_tokenizer([" ".join(_words(12, seed=i)) for i in range(100)], kind="wordpiece",
                          vocab_size=80, min_frequency=1)
    tok.save(tmp_path / "tok")
    words = _words(300)
    (tmp_path / "one.txt").write_text(" ".join(words) + "\n")
    assert main(["data", "prepare", "--corpus", str(tmp_path / "one.txt"), "--tokenizer", str(tmp_path / "tok"),
                 "--out", str(tmp_path / "d"), "--workers", "1"]) == 0
    assert "split 1 long lines and 1 long documents" in capsys.readouterr().err
    data = ShardedCorpus(tmp_path / "d")
    assert data.num_documents > 1
    ids = np.concatenate([data.document(i)[1:-1] for i in range(data.num_documents)])  # without [CLS] [SEP]
    assert ids.tolist() == tok.encode(" ".join(words), add_special_tokens=False).ids  # every word, in order


@pytest.mark.slow
def test_prepare_on_a_10_mb_single_line_stays_under_1_gb(tmp_path):
    tok = train_tokenizer([" ".join(_words(20, seed=i)) for i in range(200)], kind="wordpiece",
                          vocab_size=120, min_frequency=1)
    tok.save(tmp_path / "tok")
    block = " ".join(_words(100_000)) + " "
    with open(tmp_path / "one.txt", "w") as handle:
        for _ in range((10 << 20) // len(block) + 1):
            handle.write(block)
        handle.write("\n")
    # a child that runs the CLI as a user types it and reports its own child's peak RSS (KiB on Linux)
    probe = textwrap.dedent(f"""
        import resource, subprocess, sys
        r = subprocess.run([sys.executable, "-m", "masklm", "data", "prepare", "--corpus", {str(tmp_path / "one.txt")!r},
                            "--tokenizer", {str(tmp_path / "tok")!r}, "--out", {str(tmp_path / "d")!r},
                            "--workers", "1"], capture_output=True, text=True)
        sys.stderr.write(r.stderr)
        print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    """)
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=900)
    code, peak_kib = map(int, r.stdout.split())
    assert code == 0, r.stderr
    assert "split 1 long lines" in r.stderr
    assert peak_kib < 1 << 20, f"peak RSS {peak_kib >> 10} MiB"
    data = ShardedCorpus(tmp_path / "d")
    assert data.num_documents >= 10 and data.num_tokens > 2_000_000
