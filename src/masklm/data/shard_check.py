"""What a valid shard folder is: the manifest's fields, every file's size and checksum, the document offsets
and the token ids, checked when ``ShardedCorpus`` opens a folder.

Any of these can be damaged on disk or edited by hand, and each used to surface later as a traceback (a
``ValueError`` from ``np.load``, an ``IndexError`` in the embedding for a token id past the vocabulary,
``__len__() should return >= 0`` for offsets that go backwards). Here each is one ``DataError`` naming the
file or the manifest field, and the fix: rebuild the folder.

Checksums (``manifest["checksums"]``, written by ``prepare_shards``): the size of every file is always
checked; ``doc_offsets.npy`` (8 bytes per document, read whole at every open) is always hashed; the token and
word-start files, which are memory-mapped and may be far bigger than what a run reads, are hashed only when
their size or modification time differs from what ``prepare_shards`` recorded (a copy that keeps times, such
as ``cp -a`` or ``rsync -a``, is trusted; any rewrite of the file is hashed), and then once per process
(``files.check_record``). A corruption that keeps the size and the modification time (bit rot) goes
unnoticed by this rule; the alternative, hashing every shard at every open, costs a full read of the corpus
(about 1 s per GB) at each start of training. Folders written before checksums existed still load: their
token ids are bounds-checked against the vocabulary instead (one read of the token files at each open).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from masklm.errors import DataError
from masklm.files import check_record

FORMAT_VERSION = 1
REBUILD = "rebuild the folder with 'masklm data prepare --overwrite' (or delete it and prepare again)"
TOKEN_DTYPES = ("uint16", "uint32")
_FIELDS = {"format_version": int, "num_tokens": int, "num_documents": int, "vocab_size": int, "dtype": str,
           "tokenizer_fingerprint": str, "doc_offsets": str, "shards": list}
_SHARD_FIELDS = {"tokens": str, "word_starts": str, "start": int, "num_tokens": int}
_CHUNK = 1 << 24  # tokens per bounds-check read


def _bad(path: Path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}; {REBUILD}")


def _field(manifest: dict, key: str, kind: type, where: Path) -> Any:
    value = manifest.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
        what = {int: "a whole number >= 0", str: "a string", list: "a list"}[kind]
        raise _bad(where, f"{key!r} is {'missing' if key not in manifest else repr(value)}, not {what}")
    return value


def _file_name(value: str, key: str, where: Path) -> str:
    """A plain file name inside the folder (a manifest may not point anywhere else)."""
    if Path(value).name != value or value in ("", ".", ".."):
        raise _bad(where, f"{key!r} is {value!r}, not a file name inside the folder")
    return value


def check_manifest(folder: Path, manifest: dict) -> None:
    """DataError naming manifest.json and the field for a missing, mistyped or inconsistent field."""
    where = folder / "manifest.json"
    for key, kind in _FIELDS.items():
        _field(manifest, key, kind, where)
    if manifest["format_version"] != FORMAT_VERSION:
        raise _bad(where, f"format_version {manifest['format_version']} is not this masklm's ({FORMAT_VERSION})")
    if manifest["dtype"] not in TOKEN_DTYPES:
        raise _bad(where, f"'dtype' is {manifest['dtype']!r}, not one of {', '.join(TOKEN_DTYPES)}")
    if manifest["vocab_size"] < 1 or np.iinfo(manifest["dtype"]).max + 1 < manifest["vocab_size"]:
        raise _bad(where, f"'vocab_size' {manifest['vocab_size']} does not fit dtype {manifest['dtype']}")
    _file_name(manifest["doc_offsets"], "doc_offsets", where)
    total = 0
    for i, shard in enumerate(manifest["shards"]):
        if not isinstance(shard, dict):
            raise _bad(where, f"shards[{i}] is {shard!r}, not a table")
        for key, kind in _SHARD_FIELDS.items():
            _field(shard, key, kind, where)
        _file_name(shard["tokens"], "tokens", where)
        _file_name(shard["word_starts"], "word_starts", where)
        if shard["start"] != total:
            raise _bad(where, f"shards[{i}] starts at token {shard['start']}, but the shards before it end at {total}")
        total += shard["num_tokens"]
    if total != manifest["num_tokens"]:
        raise _bad(where, f"'num_tokens' is {manifest['num_tokens']}, but the shards hold {total}")
    checksums = manifest.get("checksums", {})
    fine = isinstance(checksums, dict) and all(
        isinstance(r, dict) and isinstance(r.get("bytes"), int) and isinstance(r.get("sha256"), str)
        for r in checksums.values())
    if not fine:
        raise _bad(where, "'checksums' is not a table of files with bytes and sha256")


def check_files(folder: Path, manifest: dict) -> None:
    """Every file present with its recorded size and checksum (see the module docstring for when a file is
    hashed); old folders without checksums get their token ids bounds-checked instead."""
    itemsize = np.dtype(manifest["dtype"]).itemsize
    checksums = manifest.get("checksums", {})
    expected = [(manifest["doc_offsets"], None, False)]
    for shard in manifest["shards"]:
        expected.append((shard["tokens"], shard["num_tokens"] * itemsize, True))
        expected.append((shard["word_starts"], shard["num_tokens"], True))
    for name, size, big in expected:
        path = folder / name
        if not path.is_file() or (size is not None and path.stat().st_size != size):
            found = f"{path.stat().st_size} bytes" if path.is_file() else "no file"
            raise DataError(f"{path} is missing or truncated ({found}, {size or 'a'} bytes expected); {REBUILD}")
        if name in checksums:
            check_record(path, checksums[name], DataError, REBUILD, trust_mtime=big)
    for shard in manifest["shards"]:
        if shard["tokens"] not in checksums:
            _check_token_ids(folder / shard["tokens"], manifest["dtype"], shard["num_tokens"], manifest["vocab_size"])


def _check_token_ids(path: Path, dtype: str, count: int, vocab_size: int) -> None:
    """DataError when a token id is past the vocabulary (it would index out of the embedding)."""
    if count == 0:
        return
    tokens = np.memmap(path, dtype=dtype, mode="r", shape=(count,))
    for lo in range(0, count, _CHUNK):
        top = int(tokens[lo:lo + _CHUNK].max())
        if top >= vocab_size:
            raise DataError(f"{path} holds token id {top}, but the vocabulary has {vocab_size} tokens; {REBUILD}")


def load_offsets(folder: Path, manifest: dict) -> np.ndarray:
    """``doc_offsets.npy`` as int64 ``[num_documents + 1]``: starting at 0, never decreasing, ending at
    ``num_tokens``, with every shard starting at a document boundary (documents never straddle shards)."""
    path = folder / manifest["doc_offsets"]
    try:
        offsets = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _bad(path, f"not a readable .npy array ({' '.join(str(exc).split())[:120]})") from None
    if offsets.ndim != 1 or offsets.dtype.kind not in "iu":
        raise _bad(path, f"holds a {offsets.dtype} array of shape {offsets.shape}, not whole-number offsets")
    offsets = offsets.astype(np.int64)
    if len(offsets) != manifest["num_documents"] + 1 or offsets[0] != 0 or offsets[-1] != manifest["num_tokens"]:
        raise _bad(path, f"does not match the manifest ({manifest['num_documents']} documents, "
                         f"{manifest['num_tokens']} tokens)")
    if (np.diff(offsets) < 0).any():
        raise _bad(path, "offsets decrease (documents of negative length)")
    starts = np.array([s["start"] for s in manifest["shards"]], dtype=np.int64)
    if not np.isin(starts, offsets).all():
        raise _bad(path, "a shard starts inside a document")
    return offsets
