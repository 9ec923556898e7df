"""Reading fine-tuning data: labelled texts (CSV, TSV, JSONL) and BIO-tagged sentences (CoNLL, JSONL).

Every problem is a ``DataError`` naming the file and, for a bad record, its line: a missing column or
key, a malformed line, an empty text, a label that is not a number (regression), a tag that is not BIO.

Sequence files: ``.csv`` and ``.tsv`` need a header row; ``.jsonl`` holds one object per line. Column
names are configurable (default ``text`` and ``label``; a text-pair column is optional).
Tagging files: ``.jsonl`` with ``{"tokens": [...], "tags": [...]}`` per line (keys configurable), or
anything else as CoNLL: one ``token<TAB>tag`` per line (whitespace also separates; the first field is
the token, the last the tag, so CoNLL-2003's four columns work), blank lines between sentences,
``-DOCSTART-`` lines skipped. Tags must be ``O``, ``B-TYPE`` or ``I-TYPE`` (IOB2).
Question answering: SQuAD's formats (``read_qa_file``); every answer must be found at its ``answer_start``.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from masklm.data.corpus import jsonl_objects
from masklm.errors import DataError
from masklm.wording import counted

SEQUENCE_FORMATS = (".csv", ".tsv", ".jsonl")
_BIO = re.compile(r"^(O|[BI]-\S+)$")


@dataclass
class SequenceExample:
    """One text (or text pair) with its label: a class name (str) or a target (float); None if unlabelled."""

    text: str
    pair: str | None
    label: str | float | None
    where: str  # "file:line"; "file:first-last" for a CSV/TSV record over several lines
    lines: int = 1  # the lines of the file it took: more than one where a quoted field holds line breaks


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


def _records(file: Path) -> Iterator[tuple[str, dict[str, Any], int]]:
    """``(where, record, lines)`` for each row of a CSV/TSV (header row first) or JSONL file: ``lines`` is
    how many lines of the file the record took (a quoted CSV field may hold line breaks, and so may a
    stray quote, which swallows the rows after it: the caller reports such records)."""
    suffix = file.suffix.lower()
    if suffix not in SEQUENCE_FORMATS:
        raise DataError(f"{file}: unknown format {suffix or '(no suffix)'!r}; use .csv, .tsv or .jsonl")
    if suffix == ".jsonl":
        for where, record in jsonl_objects(file):
            yield where, record, 1
        return
    reader = None
    try:
        with open(file, encoding="utf-8-sig", newline="") as f:
            delimiter = "\t" if suffix == ".tsv" else ","
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if not header:
                raise DataError(f"{file} is empty; it needs a header row naming the columns, then data rows")
            if twice := sorted({name for name in header if header.count(name) > 1}):
                raise DataError(f"{file}:1: the header names column {twice[0]!r} twice; give each column its own "
                                "name")
            end = reader.line_num  # the last line read so far
            for row in reader:
                start, end = end + 1, reader.line_num
                where = f"{file}:{start}" if end == start else f"{file}:{start}-{end}"
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != len(header):  # a separator inside a field: quoting swallowed it, a quote left open
                    unclosed = end > start or any(delimiter in cell for cell in row)
                    hint = (f"a quote opened on line {start} may not be closed" if unclosed
                            else "quote fields that contain the separator")
                    raise DataError(f"{where}: {counted(len(row), 'field')} but the header has {len(header)}; {hint}")
                yield where, dict(zip(header, row)), end - start + 1
    except UnicodeDecodeError as exc:
        raise DataError(f"{file} is not UTF-8 text ({exc.reason}); re-save it as UTF-8") from None
    except csv.Error as exc:
        where = f"{file}:{reader.line_num}" if reader is not None else str(file)  # where the reader stopped
        raise DataError(f"{where}: malformed {suffix[1:].upper()} ({exc}); check its quoting") from None


def multiline_note(wheres: list[str], records: int) -> str:
    """The line reporting the records of one CSV/TSV file that span several lines (``wheres``: their
    "file:first-last"), out of ``records``: a quoted field may hold line breaks, but a stray quote also
    joins the rows after it into one text, so the count is said, never passed over in silence."""
    file, span = wheres[0].rsplit(":", 1)
    return (f"{file}: {len(wheres)} of {records} records span several lines (a quoted field with line breaks; "
            f"the first at lines {span}); if a stray quote joined rows there, close or remove it")


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
    for where, record, lines in _records(file):
        text = _text(_column(record, text_column, where, "--text-column"), text_column, where)
        pair = None
        if pair_column is not None:
            pair = _text(_column(record, pair_column, where, "--text-pair-column"), pair_column, where)
        label: str | float | None = None
        if label_column is not None:
            raw = _column(record, label_column, where, "--label-column")
            label = _regression_target(raw, label_column, where) if regression else _class_label(
                raw, label_column, where)
        examples.append(SequenceExample(text, pair, label, where, lines))
    if not examples:
        raise DataError(f"{file} has no data rows; add examples")
    return examples


def _class_label(raw: Any, column: str, where: str) -> str:
    if isinstance(raw, str) and "\n" in raw.strip():  # no class name holds a line break: a quote left open
        first = where.rsplit(":", 1)[1].split("-")[0]
        raise DataError(f"{where}: label {column!r} runs over several lines ({raw[:40]!r}...); a quote opened on "
                        f"line {first} may not be closed")
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
    for where, record, _ in _records(file):
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


# ---- extractive question answering: SQuAD-format files -------------------------------------------------

QA_FORMATS = (".jsonl", ".json")


@dataclass
class QAExample:
    """A question about a context, with its gold answers ``(text, character start)``; an empty list is
    SQuAD v2.0's "no answer" (for unlabelled input too)."""

    question: str
    context: str
    answers: list[tuple[str, int]]
    where: str
    id: str | None = None


def _answer_list(raw: Any, context: str, where: str) -> list[tuple[str, int]]:
    """Answers given as ``{"text": [...], "answer_start": [...]}`` (JSONL, Hugging Face datasets) or
    ``[{"text", "answer_start"}, ...]`` (SQuAD JSON), each checked against the context."""
    if isinstance(raw, dict):
        texts, starts = raw.get("text"), raw.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise DataError(f"{where}: 'answers' must hold lists 'text' and 'answer_start' of one length")
        pairs = list(zip(texts, starts))
    elif isinstance(raw, list) and all(isinstance(a, dict) for a in raw):
        pairs = [(a.get("text"), a.get("answer_start")) for a in raw]
    else:
        raise DataError(f"{where}: 'answers' must be {{\"text\": [...], \"answer_start\": [...]}} or a list "
                        "of {\"text\", \"answer_start\"} objects")
    answers = []
    for text, start in pairs:
        if not isinstance(text, str) or not text.strip() or isinstance(start, bool) or not isinstance(start, int):
            raise DataError(f"{where}: an answer needs a non-empty 'text' and an integer 'answer_start', got "
                            f"{text!r} at {start!r}")
        if context[start:start + len(text)] != text:
            raise DataError(f"{where}: answer {text!r} is not at answer_start {start} of the context (there it "
                            f"reads {context[start:start + len(text)]!r}); fix answer_start")
        answers.append((text, start))
    return answers


def _key(record: dict[str, Any], name: str, where: str) -> Any:
    if name not in record:
        have = ", ".join(repr(k) for k in record) or "none"
        raise DataError(f"{where}: no {name!r} (keys: {have}); SQuAD records have 'question', 'context' and "
                        "'answers'")
    return record[name]


def _qa_example(record: dict[str, Any], where: str, labelled: bool, context: str | None = None) -> QAExample:
    question = _text(_key(record, "question", where), "question", where)
    if context is None:
        context = _text(_key(record, "context", where), "context", where)
    answers: list[tuple[str, int]] = []
    if labelled:
        answers = _answer_list(_key(record, "answers", where), context, where)
        if not answers and not record.get("is_impossible", True):
            raise DataError(f"{where}: no answers but 'is_impossible' is false; give the answer")
    qid = record.get("id")
    return QAExample(question, context, answers, where, None if qid is None else str(qid))


def _read_squad_json(file: Path, labelled: bool) -> list[QAExample]:
    try:
        data = json.loads(file.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{file} is not UTF-8 text ({exc.reason}); re-save it as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno}); fix it") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(f"{file}: a SQuAD .json file is {{\"data\": [{{\"paragraphs\": [...]}}]}}; for one "
                        "record per line use .jsonl")
    examples = []
    for i, article in enumerate(data["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise DataError(f"{file}: data[{i}] has no 'paragraphs' list")
        for j, paragraph in enumerate(paragraphs):
            where = f"{file}: data[{i}].paragraphs[{j}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                raise DataError(f"{where} needs 'context' and a 'qas' list")
            context = _text(_key(paragraph, "context", where), "context", where)
            for k, qa in enumerate(paragraph["qas"]):
                if not isinstance(qa, dict):
                    raise DataError(f"{where}.qas[{k}] is not an object")
                examples.append(_qa_example(qa, f"{where}.qas[{k}]", labelled, context))
    return examples


def read_qa_file(path: str | Path, labelled: bool = True) -> list[QAExample]:
    """Questions of a SQuAD-format file: ``.jsonl`` with ``{"question", "context", "answers": {"text": [...],
    "answer_start": [...]}}`` per line, or SQuAD v1.1/v2.0 ``.json`` (``data[].paragraphs[].qas[]``).
    ``labelled=False`` reads questions and contexts only (answers, if any, are not read)."""
    file = _check_file(path)
    suffix = file.suffix.lower()
    if suffix not in QA_FORMATS:
        raise DataError(f"{file}: unknown format {suffix or '(no suffix)'!r}; question answering reads SQuAD "
                        ".jsonl (one question per line) or SQuAD .json")
    if suffix == ".json":
        examples = _read_squad_json(file, labelled)
    else:
        examples = [_qa_example(record, where, labelled) for where, record in jsonl_objects(file)]
    if not examples:
        raise DataError(f"{file} has no questions; add some")
    return examples
