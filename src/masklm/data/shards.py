"""Tokenized corpora on disk: memory-mapped token shards, document offsets and word starts.

A shard folder holds::

    manifest.json              what was built from what (written last: it marks a complete folder)
    tokens-00000.bin ...       token ids, uint16 (vocab <= 65536) or uint32, documents back to back
    word_starts-00000.bin ...  one uint8 per token: 1 where a word starts
    doc_offsets.npy            int64 [num_documents + 1]: global token offset of each document
    tokenizer/                 the tokenizer that produced it

The manifest also records the size and sha256 of every file (``checksums``), checked when the folder is
opened (``data.shard_check``: what is hashed when, and why). Each document is stored as the tokenizer
encodes it (``[CLS] text [SEP]``) and never straddles two shards. The folder is built under a temporary name and renamed into place (``masklm.files.atomic_dir``), so an
interrupted run never leaves a complete-looking folder.
"""

from __future__ import annotations

import collections
import datetime
import json
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as Backend

from masklm.data.corpus import CorpusStats, ignored_files, iter_documents, resolve_files
from masklm.data.shard_check import FORMAT_VERSION, check_files, check_manifest, load_offsets
from masklm.errors import DataError
from masklm.files import atomic_dir, check_writable, file_record, sha256_file
from masklm.tokenizer import Tokenizer, unknown_note, word_starts
from masklm.version import __version__
from masklm.wording import counted

CHUNK_DOCUMENTS = 1000          # documents per worker task: amortises IPC
CHUNK_CHARS = 1 << 20           # characters per worker task: bounds a worker's memory (~250k tokens)
SHARD_TOKENS = 1 << 28          # 256M tokens (512 MiB at uint16) per shard file
HASH_LIMIT = 256 << 20          # sha256 files up to 256 MiB; bigger ones are tracked by size+mtime


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


def _describe_files(files: list[Path]) -> list[dict]:
    described = []
    for path in files:
        st = path.stat()
        described.append({"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return described


def _changes(old: list[dict], new: list[dict]) -> list[str]:
    """What differs, one phrase per file: new, gone, resized, or touched (mtime) with other content (sha)."""
    before, now = {f["path"]: f for f in old}, {f["path"]: f for f in new}
    found = [f"{p} is gone" for p in before if p not in now] + [f"{p} is new" for p in now if p not in before]
    for path in (p for p in now if p in before):
        was, is_ = before[path], now[path]
        if was["size"] != is_["size"]:
            found.append(f"{path} has {is_['size']} bytes, not {was['size']}")
        elif was["mtime_ns"] != is_["mtime_ns"] and was.get("sha256") != sha256_file(Path(path)):
            found.append(f"{path} has other content")
    if not found and list(before) != list(now):
        found.append("the files are read in another order")
    return found


def _same_files(old: list[dict], new: list[dict]) -> bool:
    """Same paths and sizes, and each file either untouched (mtime) or with the same content (sha)."""
    try:
        return not _changes(old, new)
    except (TypeError, KeyError):  # a manifest edited by hand: not the same files
        return False


def source_changes(recorded: list[dict], sources: list[str] | str) -> list[str]:
    """How the files ``sources`` name now differ from ``recorded`` (a manifest's ``source_files``); [] when
    they are the same. A training run checks its corpus with it before it resumes."""
    return _changes(recorded, _describe_files(resolve_files(sources)))


# ---------------------------------------------------------------- tokenization (runs in workers)

_WORKER_TOKENIZER = None


def _init_worker(tokenizer_json: str) -> None:
    """A pool worker: its tokenizer, and Ctrl-C left to the parent (the terminal sends SIGINT to the whole
    process group; a worker that raised KeyboardInterrupt printed its traceback, and a pool whose worker
    died mid-task could leave the parent waiting for a result forever). The parent stops the pool."""
    global _WORKER_TOKENIZER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER_TOKENIZER = Backend.from_str(tokenizer_json)


def _encode_chunk(texts: list[str], backend=None, dtype: str = "uint16") -> tuple[np.ndarray, ...]:
    """Tokenize documents -> (ids [N] dtype, word_starts [N] uint8, lengths [D] int64)."""
    backend = backend if backend is not None else _WORKER_TOKENIZER
    encodings = backend.encode_batch(texts)
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    total = int(lengths.sum())
    ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=dtype, count=total)
    starts = np.concatenate([word_starts(e, t) for e, t in zip(encodings, texts)] or [np.zeros(0, bool)])
    return ids, starts.astype(np.uint8), lengths


def _chunks(documents: Iterable[str], size: int, chars: int | None = None) -> Iterator[list[str]]:
    """Lists of at most ``size`` documents and ``chars`` characters (at least one document each)."""
    chars = CHUNK_CHARS if chars is None else chars
    chunk: list[str] = []
    total = 0
    for text in documents:
        if chunk and (len(chunk) == size or total + len(text) > chars):
            yield chunk
            chunk, total = [], 0
        chunk.append(text)
        total += len(text)
    if chunk:
        yield chunk


def _encoded_chunks(documents: Iterable[str], tokenizer: Tokenizer, dtype: np.dtype,
                    num_workers: int) -> Iterator[tuple[np.ndarray, ...]]:
    """Encoded chunks in corpus order; at most 2 x workers chunks are in flight (bounded memory)."""
    if num_workers <= 1:
        for chunk in _chunks(documents, CHUNK_DOCUMENTS):
            yield _encode_chunk(chunk, tokenizer.backend, dtype.name)
        return
    # Children get one thread each; setting the variable also stops tokenizers' fork warning.
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        pool = multiprocessing.get_context(method).Pool(
            num_workers, initializer=_init_worker, initargs=(tokenizer.backend.to_str(),)
        )
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
    try:
        pending: collections.deque = collections.deque()
        for chunk in _chunks(documents, CHUNK_DOCUMENTS):
            pending.append(pool.apply_async(_encode_chunk, (chunk, None, dtype.name)))
            if len(pending) >= 2 * num_workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
    finally:
        pool.terminate()
        pool.join()


class _ShardWriter:
    """Appends encoded documents to shard files, starting a new shard rather than split a document."""

    def __init__(self, folder: Path, dtype: np.dtype, shard_tokens: int, unk_id: int) -> None:
        self.folder, self.dtype, self.shard_tokens, self.unk_id = folder, dtype, shard_tokens, unk_id
        self.shards: list[dict] = []
        self.lengths: list[np.ndarray] = []
        self.total = 0
        self.unknown = 0  # [UNK] tokens written
        self._files = None

    def _new_shard(self) -> None:
        self.close()
        index = len(self.shards)
        shard = {"tokens": f"tokens-{index:05d}.bin", "word_starts": f"word_starts-{index:05d}.bin",
                 "start": self.total, "num_tokens": 0}
        self.shards.append(shard)
        self._files = (open(self.folder / shard["tokens"], "wb"), open(self.folder / shard["word_starts"], "wb"))

    def add(self, ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> None:
        self.lengths.append(lengths)
        self.unknown += int(np.count_nonzero(ids == self.unk_id))
        cum = np.concatenate([[0], np.cumsum(lengths)])
        i = 0
        while i < len(lengths):
            used = self.shards[-1]["num_tokens"] if self.shards else self.shard_tokens
            room = self.shard_tokens - used
            j = int(np.searchsorted(cum, cum[i] + room, side="right")) - 1
            if j <= i:
                if used > 0:
                    self._new_shard()
                    continue
                j = i + 1  # a document longer than a shard gets a shard of its own
            lo, hi = cum[i], cum[j]
            self._files[0].write(ids[lo:hi].tobytes())
            self._files[1].write(starts[lo:hi].tobytes())
            self.shards[-1]["num_tokens"] += int(hi - lo)
            self.total += int(hi - lo)
            i = j

    def close(self) -> None:
        if self._files:
            for handle in self._files:  # flushed to disk by atomic_dir with the rest of the folder
                handle.close()
            self._files = None


# ---------------------------------------------------------------- building

def _read_manifest(folder: Path) -> dict | None:
    """The folder's manifest, or None when it is missing, unreadable or not a JSON object."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return manifest if isinstance(manifest, dict) else None


def is_shard_folder(folder: Path) -> bool:
    """Whether ``folder``'s manifest says it is a masklm shard folder (complete or not)."""
    return (_read_manifest(Path(folder)) or {}).get("format") == "masklm-shards"


def _up_to_date(out_dir: Path, fingerprint: str, files: list[dict], overwrite: bool,
                log: Callable[[str], None]) -> dict | None:
    """The manifest of ``out_dir`` when it already holds shards of ``files`` made with this tokenizer, else
    None. A damaged shard folder (``ShardedCorpus`` refuses it) is rebuilt with ``overwrite``, and is an
    error naming the damaged file without it."""
    manifest = _read_manifest(out_dir)
    if not manifest or manifest.get("format") != "masklm-shards":
        return None
    try:
        ShardedCorpus(out_dir)  # the manifest's fields, every file's size and checksum, the offsets
    except DataError as exc:
        if not overwrite:
            raise
        log(f"rebuilding {out_dir}: {str(exc).split('; ')[0]}")
        return None
    if manifest["tokenizer_fingerprint"] != fingerprint:
        return None
    if not _same_files(manifest.get("source_files", []), files):
        return None
    return manifest


def prepare_shards(
    sources: list[str] | str,
    tokenizer: Tokenizer,
    out_dir: str | Path,
    num_workers: int | None = None,
    log: Callable[[str], None] = _stderr,
    shard_tokens: int = SHARD_TOKENS,
    overwrite: bool = True,
) -> dict:
    """Tokenize ``sources`` in parallel into a shard folder; returns its manifest.

    Does nothing (logs "up to date") when ``out_dir`` already holds shards of the same files made
    with the same tokenizer; rebuilds when either changed, only if ``overwrite`` (``data prepare``
    passes its ``--overwrite``). A folder holding anything but masklm shards is never replaced.
    """
    out_dir = Path(out_dir)
    check_writable(out_dir)
    files = resolve_files(sources)
    described = _describe_files(files)
    fingerprint = tokenizer.fingerprint()
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir} is a file; choose a folder for the shards")
    manifest = _up_to_date(out_dir, fingerprint, described, overwrite, log)
    if manifest is not None:
        log(f"{out_dir}: up to date ({counted(manifest['num_documents'], 'document')}, "
            f"{counted(manifest['num_tokens'], 'token')})")
        return manifest
    if out_dir.exists() and any(out_dir.iterdir()):
        if not is_shard_folder(out_dir):
            raise DataError(f"{out_dir} exists and is not a shard folder (it has no valid masklm manifest.json); "
                            "pass an empty or new folder to --out, or delete it yourself")
        if not overwrite:
            raise DataError(f"{out_dir} holds shards of other files or another tokenizer; pass --overwrite to "
                            "rebuild them, or choose another --out")
    for entry in described:
        if entry["size"] <= HASH_LIMIT:
            entry["sha256"] = sha256_file(Path(entry["path"]))

    num_workers = num_workers or min(os.cpu_count() or 1, 8)
    dtype = token_dtype(tokenizer.vocab_size)
    with atomic_dir(out_dir) as tmp:
        stats = CorpusStats()
        writer = _ShardWriter(tmp, dtype, shard_tokens, tokenizer.unk_id)
        documents = iter_documents([str(f) for f in files], stats)
        stats.ignored_files = [str(p) for p in ignored_files(sources)]  # the files are resolved: ask the folders
        for n, (ids, starts, lengths) in enumerate(_encoded_chunks(documents, tokenizer, dtype, num_workers)):
            writer.add(ids, starts, lengths)
            if n % 50 == 49:
                log(f"tokenized {stats.documents} documents, {writer.total} tokens")
        writer.close()
        lengths = np.concatenate(writer.lengths)
        np.save(tmp / "doc_offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        tokenizer.save(tmp / "tokenizer")
        names = ["doc_offsets.npy"] + [s[key] for s in writer.shards for key in ("tokens", "word_starts")]
        manifest = {
            "format": "masklm-shards", "format_version": FORMAT_VERSION, "masklm_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "num_tokens": writer.total, "num_unknown_tokens": writer.unknown, "num_documents": int(len(lengths)),
            "dtype": dtype.name,
            "vocab_size": tokenizer.vocab_size, "tokenizer_fingerprint": fingerprint,
            "tokenizer_kind": tokenizer.kind, "special_ids": tokenizer.special_ids,
            "sources": [str(s) for s in ([sources] if isinstance(sources, (str, Path)) else sources)],
            "source_files": described, "corpus_stats": stats.to_dict(),
            "doc_offsets": "doc_offsets.npy", "shards": writer.shards,
            "checksums": {name: file_record(tmp / name) for name in names},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    log(f"{out_dir}: {counted(writer.total, 'token')} ({writer.unknown / max(writer.total, 1):.2%} [UNK]) from "
        f"{stats.summary()}")
    if note := unknown_note(writer.unknown, writer.total, f"the corpus {' '.join(manifest['sources'])}"):
        log(note)
    return manifest


# ---------------------------------------------------------------- reading

class ShardedCorpus:
    """Read-only view of a shard folder through ``np.memmap`` (nothing loaded up front).

    ``doc_offsets`` int64 [D+1] and ``doc_lengths`` int64 [D] index the global token stream;
    ``gather(positions)`` reads token ids and word starts at arbitrary global positions.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise DataError(f"shard folder {self.directory} not found; create it with 'masklm data prepare'")
        manifest = _read_manifest(self.directory)
        if manifest is None or manifest.get("format") != "masklm-shards":
            raise DataError(
                f"{self.directory} has no valid manifest.json (not prepared, or interrupted); "
                "run 'masklm data prepare' again"
            )
        check_manifest(self.directory, manifest)
        self.manifest = manifest
        self.dtype = np.dtype(manifest["dtype"])
        self.num_tokens = manifest["num_tokens"]
        self.num_documents = manifest["num_documents"]
        self.vocab_size = manifest["vocab_size"]
        self.tokenizer_fingerprint = manifest["tokenizer_fingerprint"]
        check_files(self.directory, manifest)
        self.doc_offsets = load_offsets(self.directory, manifest)
        self.doc_lengths = np.diff(self.doc_offsets)
        self._open()

    def _open(self) -> None:
        shards = self.manifest["shards"]
        self._starts = np.array([s["start"] for s in shards], dtype=np.int64)
        self._tokens = [np.memmap(self.directory / s["tokens"], dtype=self.dtype, mode="r",
                                  shape=(s["num_tokens"],)) for s in shards]
        self._word_starts = [np.memmap(self.directory / s["word_starts"], dtype=np.uint8, mode="r",
                                       shape=(s["num_tokens"],)) for s in shards]

    # memmaps would pickle as full copies; reopen them in the receiving process instead.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_tokens", "_word_starts"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return self.num_documents

    def __repr__(self) -> str:
        return f"ShardedCorpus({str(self.directory)!r}, documents={self.num_documents}, tokens={self.num_tokens})"

    def gather(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (int64) and word starts (bool) at global ``positions`` (any shape)."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(self._tokens) == 1:
            return self._tokens[0][positions].astype(np.int64), self._word_starts[0][positions].astype(bool)
        shard = np.searchsorted(self._starts, positions, side="right") - 1
        ids = np.empty(positions.shape, dtype=np.int64)
        starts = np.empty(positions.shape, dtype=bool)
        for s in np.unique(shard):
            sel = shard == s
            local = positions[sel] - self._starts[s]
            ids[sel] = self._tokens[s][local]
            starts[sel] = self._word_starts[s][local]
        return ids, starts

    def _document_slice(self, i: int) -> tuple[int, int, int]:
        if not 0 <= i < self.num_documents:
            raise IndexError(f"document {i} out of range (corpus has {self.num_documents})")
        lo, hi = int(self.doc_offsets[i]), int(self.doc_offsets[i + 1])
        s = int(np.searchsorted(self._starts, lo, side="right")) - 1  # documents never straddle shards
        return s, lo - int(self._starts[s]), hi - int(self._starts[s])

    def document(self, i: int) -> np.ndarray:
        """Token ids of document ``i`` (int64 [L]), including its [CLS] ... [SEP]."""
        s, lo, hi = self._document_slice(i)
        return np.asarray(self._tokens[s][lo:hi], dtype=np.int64)

    def word_starts(self, i: int) -> np.ndarray:
        """bool [L]: True where a word starts in document ``i``."""
        s, lo, hi = self._document_slice(i)
        return np.asarray(self._word_starts[s][lo:hi], dtype=bool)
