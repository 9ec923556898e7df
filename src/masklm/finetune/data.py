"""Reading fine-tuning data: labelled texts (CSV, TSV, JSONL) and BIO-tagged sentences (CoNLL, JSONL).

Every problem is a ``DataError`` naming the file and, for a bad record, its line: a missing column or
key, a malformed line, an empty text, a label that is not a number (regression), a tag that is not BIO.

Sequence files: ``.csv`` and ``.tsv`` need a header row; ``.jsonl`` holds one object per line. Column
names are configurable (default ``text`` and ``label``; a text-pair column is optional).
Tagging files: ``.jsonl`` with ``{"tokens": [...], "tags": [...]}`` per line (keys configurable), or
anything else as CoNLL: one ``token<TAB>tag`` per line (whitespace also separates; the first field is
the token, the last the tag, so CoNLL-2003's four columns work), blank lines between sentences,
``-DOCSTART-`` lines skipped. Tags must be ``O``, ``B-TYPE`` or ``I-TYPE`` (IOB2).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from masklm.data.corpus import jsonl_objects
from masklm.errors import DataError

SEQUENCE_FORMATS = (".csv", ".tsv", ".jsonl")
_BIO = re.compile(r"^(O|[BI]-\S+)$")


@dataclass
class SequenceExample:
    """One text (or text pair) with its label: a class name (str) or a target (float); None if unlabelled."""

    text: str
    pair: str | None
    label: str | float | None
    where: str  # "file:line"


@dataclass
class TaggedSentence:
    """Words and their BIO tags (tags are empty for unlabelled input)."""

    words: list[str]
    tags: list[str]
    where: str  # "file:line" of the sentence's first line


def _check_file(path: str | Path) -> Path:
    file = Path(path)
    if not file.is_file():
        raise DataError(f"data file {file} does not exist; check the path")
    return file


def _lines(file: Path) -> Iterator[tuple[int, str]]:
    try:
        with open(file, encoding="utf-8-sig") as f:
            yield from enumerate(f, start=1)
    except UnicodeDecodeError as exc:
        raise DataError(f"{file} is not UTF-8 text ({exc.reason}); re-save it as UTF-8") from None


def _records(file: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, record)`` for each row of a CSV/TSV (header row first) or JSONL file."""
    suffix = file.suffix.lower()
    if suffix not in SEQUENCE_FORMATS:
        raise DataError(f"{file}: unknown format {suffix or '(no suffix)'!r}; use .csv, .tsv or .jsonl")
    if suffix == ".jsonl":
        yield from jsonl_objects(file)
        return
    reader = None
    try:
        with open(file, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t" if suffix == ".tsv" else ",")
            header = next(reader, None)
            if not header:
                raise DataError(f"{file} is empty; it needs a header row naming the columns, then data rows")
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise DataError(f"{file}:{reader.line_num}: {len(row)} fields but the header has "
                                    f"{len(header)}; quote fields that contain the separator")
                yield f"{file}:{reader.line_num}", dict(zip(header, row))
    except UnicodeDecodeError as exc:
        raise DataError(f"{file} is not UTF-8 text ({exc.reason}); re-save it as UTF-8") from None
    except csv.Error as exc:
        where = f"{file}:{reader.line_num}" if reader is not None else str(file)
        raise DataError(f"{where}: malformed {suffix[1:].upper()} ({exc}); check its quoting") from None


def _column(record: dict[str, Any], name: str, where: str, flag: str) -> Any:
    if name not in record:
        have = ", ".join(repr(k) for k in record) or "none"
        raise DataError(f"{where}: no column {name!r} (columns: {have}); name the right one with {flag}")
    return record[name]


def _text(value: Any, name: str, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: {name!r} is empty; remove the row or give it text")
    return value


def read_sequence_file(path: str | Path, text_column: str = "text", pair_column: str | None = None,
                       label_column: str | None = "label", regression: bool = False) -> list[SequenceExample]:
    """Labelled (or, with ``label_column=None``, unlabelled) texts of a CSV, TSV or JSONL file."""
    file = _check_file(path)
    examples = []
    for where, record in _records(file):
        text = _text(_column(record, text_column, where, "--text-column"), text_column, where)
        pair = None
        if pair_column is not None:
            pair = _text(_column(record, pair_column, where, "--text-pair-column"), pair_column, where)
        label: str | float | None = None
        if label_column is not None:
            raw = _column(record, label_column, where, "--label-column")
            label = _regression_target(raw, label_column, where) if regression else _class_label(
                raw, label_column, where)
        examples.append(SequenceExample(text, pair, label, where))
    if not examples:
        raise DataError(f"{file} has no data rows; add examples")
    return examples


def _class_label(raw: Any, column: str, where: str) -> str:
    if isinstance(raw, bool):
        return str(raw).lower()
    if isinstance(raw, (int, str)) and str(raw).strip():
        return str(raw).strip()
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    raise DataError(f"{where}: label {column!r} is {raw!r}; give a class name or an integer class id")


def _regression_target(raw: Any, column: str, where: str) -> float:
    try:
        value = float(raw) if not isinstance(raw, bool) else math.nan
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{where}: regression target {column!r} is {raw!r}, not a finite number; fix the row")
    return value


def label_list(examples: list[SequenceExample], where: str) -> list[str]:
    """The sorted class names of a training set (numerically if all are integers); one class is an error."""
    labels = sorted({str(e.label) for e in examples})
    if len(labels) < 2:
        raise DataError(f"{where}: every training example has label {labels[0]!r}; a classifier needs at "
                        "least two classes (check --label-column, or use --task regression for numbers)")
    if all(re.fullmatch(r"-?\d+", x) for x in labels):
        labels.sort(key=int)
    return labels


def check_bio(tag: str, where: str) -> None:
    """Raise a DataError unless ``tag`` is ``O``, ``B-TYPE`` or ``I-TYPE``."""
    if not _BIO.match(tag):
        hint = " (BIOES/IOBES tags: convert S- to B- and E- to I-)" if tag[:2] in ("S-", "E-") else ""
        raise DataError(f"{where}: tag {tag!r} is not BIO; use O, B-TYPE or I-TYPE{hint}")


def read_tagging_file(path: str | Path, tokens_key: str = "tokens", tags_key: str | None = "tags"
                      ) -> list[TaggedSentence]:
    """BIO-tagged sentences of a JSONL or CoNLL file (see the module docstring); ``tags_key=None``
    reads JSONL tokens only (unlabelled input)."""
    file = _check_file(path)
    if file.suffix.lower() == ".jsonl":
        sentences = _read_tagging_jsonl(file, tokens_key, tags_key)
    else:
        sentences = _read_conll(file)
    if not sentences:
        raise DataError(f"{file} has no sentences; add tagged sentences")
    return sentences


def _read_tagging_jsonl(file: Path, tokens_key: str, tags_key: str | None) -> list[TaggedSentence]:
    sentences = []
    for where, record in _records(file):
        words = _column(record, tokens_key, where, "--text-column")
        if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
            raise DataError(f"{where}: {tokens_key!r} must be a non-empty list of non-empty strings")
        tags: list[str] = []
        if tags_key is not None:
            tags = _column(record, tags_key, where, "--label-column")
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise DataError(f"{where}: {tags_key!r} must be a list of tag strings")
            if len(tags) != len(words):
                raise DataError(f"{where}: {len(words)} tokens but {len(tags)} tags; give one tag per token")
            for tag in tags:
                check_bio(tag, where)
        sentences.append(TaggedSentence(list(words), list(tags), where))
    return sentences


def _read_conll(file: Path) -> list[TaggedSentence]:
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0
    for n, line in _lines(file):
        fields = line.split("\t") if "\t" in line else line.split()
        fields = [f.strip() for f in fields]
        if not line.strip():
            if words:
                sentences.append(TaggedSentence(words, tags, f"{file}:{start}"))
            words, tags = [], []
            continue
        if fields[0] == "-DOCSTART-":
            continue
        if len(fields) < 2 or not fields[0] or not fields[-1]:
            raise DataError(f"{file}:{n}: expected 'token<TAB>tag', got {line.rstrip()!r}; "
                            "write one token and its tag per line, blank lines between sentences")
        check_bio(fields[-1], f"{file}:{n}")
        if not words:
            start = n
        words.append(fields[0])
        tags.append(fields[-1])
    if words:
        sentences.append(TaggedSentence(words, tags, f"{file}:{start}"))
    return sentences


def tag_list(sentences: list[TaggedSentence], where: str) -> list[str]:
    """All tags of a training set: ``O`` first, then ``B-X``/``I-X`` for each entity type X, sorted.
    A set without entities is an error."""
    kinds = sorted({t[2:] for s in sentences for t in s.tags if t != "O"})
    if not kinds:
        raise DataError(f"{where}: every tag is O; a tagger needs entities (B-TYPE/I-TYPE) to learn from")
    return ["O"] + [f"{p}-{k}" for k in kinds for p in ("B", "I")]
