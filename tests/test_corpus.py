"""Corpus readers: formats, folders, bad bytes, malformed records, errors, the built-in Bible."""

from __future__ import annotations

import gzip
import json
import logging
from itertools import islice

import pytest

from masklm.data.corpus import CorpusStats, builtin_path, iter_documents, list_builtin, resolve_files
from masklm.errors import DataError


def read(sources, stats=None):
    return list(iter_documents(sources, stats))


def test_txt_documents_are_separated_by_blank_lines(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"first line\r\nstill first\r\n\r\n\n  \nsecond doc\n\n\nthird\n")
    stats = CorpusStats()
    assert read([str(path)], stats) == ["first line\nstill first", "second doc", "third"]
    assert (stats.files, stats.documents, stats.words, stats.bad_bytes) == (1, 3, 7, 0)


def test_jsonl_and_gzip_variants(tmp_path):
    records = [{"text": "one two"}, {"text": "three", "id": 7}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as handle:
        handle.write(json.dumps({"text": "gz json"}) + "\n")
    with gzip.open(tmp_path / "c.txt.gz", "wt") as handle:
        handle.write("gz text\n\nsecond gz\n")
    assert read([str(tmp_path / "a.jsonl")]) == ["one two", "three"]
    assert read([str(tmp_path / "b.jsonl.gz")]) == ["gz json"]
    assert read([str(tmp_path / "c.txt.gz")]) == ["gz text", "second gz"]


def test_folder_is_read_recursively_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("b/z\n")
    (tmp_path / "b" / "a.jsonl").write_text(json.dumps({"text": "b/a"}) + "\n")
    (tmp_path / "a.txt").write_text("a\n")
    (tmp_path / "notes.md").write_text("ignored\n")
    with gzip.open(tmp_path / "c.txt.gz", "wt") as handle:
        handle.write("c\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref\n")
    (tmp_path / "b" / "scan.png").write_bytes(b"\x89PNG")
    stats = CorpusStats()
    assert read([str(tmp_path)], stats) == ["a", "b/a", "b/z", "c"]
    assert [p.name for p in resolve_files([str(tmp_path)])] == ["a.txt", "a.jsonl", "z.txt", "c.txt.gz"]
    # what a folder holds but is not read is counted and named, never dropped in silence (hidden files aside)
    assert stats.ignored_files == [str(tmp_path / "b" / "scan.png"), str(tmp_path / "notes.md")]
    assert stats.to_dict()["ignored_files"] == 2
    assert "2 files in the folders not read" in stats.summary() and "notes.md" in stats.summary()


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"caf\xe9 ok\n\n\xff\xfe end\n")
    stats = CorpusStats()
    assert read([str(path)], stats) == ["caf\ufffd ok", "\ufffd\ufffd end"]
    assert stats.bad_bytes == 3
    # A truncated multi-byte sequence counts every byte it spans once, like errors="replace".
    path.write_bytes("\u00e9".encode()[:1] + b"x\n")
    stats = CorpusStats()
    assert read([str(path)], stats) == ["\ufffdx"] and stats.bad_bytes == 1


def test_a_jsonl_corpus_says_why_a_record_is_skipped_and_refuses_a_file_that_is_no_jsonl(tmp_path):
    path = tmp_path / "kinds.jsonl"
    path.write_text('{"text": 123}\n{"body": "x"}\n"just a string"\n{"text": "kept"}\n')
    stats = CorpusStats()
    assert read([str(path)], stats) == ["kept"]
    assert stats.skipped == {"text_not_a_string": 1, "no_text": 1, "not_an_object": 1}
    assert stats.summary() == ("1 document, 1 word from 1 file; 3 records skipped (no_text=1, not_an_object=1, "
                               "text_not_a_string=1)")  # no "0 invalid UTF-8 bytes replaced"
    csv = tmp_path / "table.jsonl"  # a CSV under the wrong name: one line, not a warning per row
    csv.write_text("text,label\n" + "".join(f"row {i},a\n" for i in range(40)))
    with pytest.raises(DataError, match=r"table.jsonl: its first 20 lines are not JSON; .*\.txt file"):
        read([str(csv)], stats := CorpusStats())
    assert stats.warnings == []  # refused in one line: no skipped-record line before it


def test_malformed_jsonl_records_are_counted_and_reported(tmp_path, caplog):
    path = tmp_path / "mixed.jsonl"
    lines = ['{"text": "good one"}', "{not json", '{"title": "no text"}', '["a list"]', "",
             '{"text": "   "}', '{"text": "good two"}']
    path.write_text("\n".join(lines) + "\n")
    stats = CorpusStats()
    with caplog.at_level(logging.WARNING, logger="masklm.data"):
        assert read([str(path)], stats) == ["good one", "good two"]
    assert stats.skipped == {"malformed_json": 1, "no_text": 1, "not_an_object": 1, "empty_text": 1}
    assert any(f"{path}:2" in w and "malformed" in w for w in stats.warnings)
    assert any(f"{path}:3" in w for w in stats.warnings) and any(f"{path}:6" in w for w in stats.warnings)
    assert f"{path}:4" in caplog.text
    assert "4 records skipped" in stats.summary()
    # a second pass over the same corpus (tokenizer, then shards) counts them again but logs none twice
    caplog.clear()
    again = CorpusStats()
    with caplog.at_level(logging.WARNING, logger="masklm.data"):
        assert read([str(path)], again) == ["good one", "good two"]
    assert again.skipped == stats.skipped and again.warnings == stats.warnings and f"{path}:" not in caplog.text


@pytest.mark.parametrize("setup, message", [
    (lambda d: str(d / "missing.txt"), "not found"),
    (lambda d: (d / "empty").mkdir() or str(d / "empty"), "has no"),
    (lambda d: (d / "only.md").write_text("x") and str(d), "has no"),
])
def test_missing_inputs_raise_data_error(tmp_path, setup, message):
    with pytest.raises(DataError, match=message):
        read([setup(tmp_path)])


def test_empty_corpus_after_cleaning_raises(tmp_path):
    (tmp_path / "blank.txt").write_text("\n\n   \n")
    (tmp_path / "junk.jsonl").write_text("{oops\n" + json.dumps({"text": ""}) + "\n")
    with pytest.raises(DataError, match="no documents"):
        read([str(tmp_path / "blank.txt"), str(tmp_path / "junk.jsonl")])


def test_reading_is_streamed(tmp_path):
    good = tmp_path / "a.txt"
    good.write_text("first\n")
    broken = tmp_path / "b.txt.gz"
    broken.write_bytes(gzip.compress(b"second\n" * 1000)[:30])  # truncated gzip
    documents = iter_documents([str(good), str(broken)])
    assert next(documents) == "first"  # yielded before the broken file is opened
    with pytest.raises(DataError, match="cannot read"):
        list(documents)


def test_kjv_documents_are_chapters():
    stats = CorpusStats()
    first, second = islice(iter_documents(["kjv"], stats), 2)
    assert first.startswith("In the beginning God created the heaven and the earth. And the earth was")
    assert first.endswith("And God saw every thing that he had made, and, behold, it was very good. "
                          "And the evening and the morning were the sixth day.")
    assert second.startswith("Thus the heavens and the earth were finished")


def test_list_builtin_counts_kjv_by_streaming():
    (row,) = list_builtin()
    assert row["name"] == "kjv" and row["documents"] == 1189
    expected_words = 0
    with open(builtin_path("kjv")) as handle:
        for line in handle:
            expected_words += len(json.loads(line)["text"].split())
    assert row["words"] == expected_words > 700_000


def test_cli_corpus_list(cli, capsys):
    assert cli(["corpus", "list"]) == 0
    out = capsys.readouterr().out
    assert "kjv" in out and "1189" in out
    assert cli(["corpus", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["name"] == "kjv" and rows[0]["documents"] == 1189 and rows[0]["words"] > 700_000


def test_cli_reports_bad_bytes_on_stderr(cli, capsys, tmp_path):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(b"alpha beta \xff gamma\n\ndelta \xfe\xfd\n")
    assert cli(["tokenizer", "train", "--corpus", str(corpus), "--out", str(tmp_path / "tok"),
                "--vocab-size", "40", "--min-frequency", "1"]) == 0
    assert f"3 invalid UTF-8 bytes replaced (in {corpus}: save it as UTF-8" in capsys.readouterr().err


def test_cli_names_the_files_of_a_corpus_folder_it_does_not_read(cli, capsys, tmp_path):
    corpus = tmp_path / "notes"
    corpus.mkdir()
    (corpus / "a.txt").write_text("alpha beta gamma\n\ndelta epsilon\n")
    for name in ("b.md", "c.csv", "d.text", "e.rtf"):
        (corpus / name).write_text("alpha beta\n")
    assert cli(["tokenizer", "train", "--corpus", str(corpus), "--out", str(tmp_path / "tok"),
                "--vocab-size", "40", "--min-frequency", "1"]) == 0
    err = capsys.readouterr().err
    assert "from 1 file;" in err and "4 files in the folders not read" in err
    assert "b.md" in err and "rename them or pass them by name" in err


def test_cli_says_when_the_corpus_gives_a_smaller_vocabulary(cli, capsys, tmp_path):
    corpus = tmp_path / "small.txt"
    corpus.write_text("alpha beta gamma\n\ndelta epsilon alpha\n")
    assert cli(["tokenizer", "train", "--corpus", str(corpus), "--out", str(tmp_path / "tok"),
                "--vocab-size", "200"]) == 0
    err = capsys.readouterr().err
    size = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())["model"]["vocab"]
    assert f"the vocabulary has {len(size)} entries, not the 200 asked for" in err and len(size) < 200
    assert "a lower --min-frequency" in err  # the default 2 left pieces out
    assert cli(["tokenizer", "train", "--corpus", str(corpus), "--out", str(tmp_path / "tok2"),
                "--vocab-size", str(len(size)), "--min-frequency", "2"]) == 0
    assert "asked for" not in capsys.readouterr().err  # all it asked for: no line


def test_train_says_when_the_corpus_gives_a_smaller_vocabulary(capsys, tmp_path):
    from masklm.cli import main

    corpus = tmp_path / "toy.txt"
    corpus.write_text("".join(f"the cat {w} sat on the mat and then ran .\n\n" for w in "abcdefghij" * 4))
    config = tmp_path / "tiny.toml"
    config.write_text("[model]\nhidden_size = 32\nnum_hidden_layers = 1\nnum_attention_heads = 2\n"
                      "intermediate_size = 64\n")
    assert main(["train", "--config", str(config), "--corpus", str(corpus), "--out", str(tmp_path / "run"),
                 "--vocab-size", "500", "--seq-len", "16", "--batch-size", "2", "--max-steps", "1",
                 "--no-progress"]) == 0
    size = json.loads((tmp_path / "run" / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert f"the vocabulary has {len(size)} entries, not the 500 asked for" in capsys.readouterr().err
