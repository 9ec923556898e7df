"""Durable files: content digests, fsync, atomic writes of folders and files, and a lock on a folder.

Model folders, checkpoints, shard folders, embedding files and plots are all written the same way: into a
hidden temporary sibling, flushed to the disk, then renamed into place (a rename within one folder is
atomic on POSIX), so a crash or an error never leaves a half-written result under the final name. An
existing folder under that name is first renamed aside and deleted only after the new one is in place.

A write that fails because the disk is full (``disk_full``) becomes one line, ``errors.DiskFull``, once the
partial write is removed, instead of a traceback; torch reports a full disk from ``torch.save`` as a
RuntimeError of its zip writer ("unexpected pos ..."), so a failed write is also read as a full disk when
less than ``LOW_SPACE`` is left there.

``folder_lock`` keeps a second process from writing into a folder one is writing: an advisory
``fcntl.flock`` on a file inside it, which the kernel drops when the holder ends, however it ends (a
crash or ``kill -9`` leaves no stale lock to clear by hand).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from masklm.errors import ConfigError, DiskFull, FolderInUse, MaskLMError

try:
    import fcntl
except ImportError:  # Windows: no flock; folder_lock holds nothing there
    fcntl = None

LOCK_NAME = ".masklm.lock"  # inside a locked folder; readers of the folder pass over it
# check_writable's empty folder, made and removed at once; another process (a torchrun rank checking the same
# run folder) may see it for that moment, so readers of a folder pass over it too
PROBE_PREFIX = ".masklm-probe-"
LOW_SPACE = 16 << 20  # bytes: a write that fails with less than this free is read as a full disk


def disk_full(exc: BaseException, where: str | Path) -> bool:
    """Whether ``exc``, raised while writing under ``where``, means that disk is full: ENOSPC or EDQUOT, or
    another OSError or RuntimeError (torch.save's) while less than ``LOW_SPACE`` is free there. Call it
    before the partial write is removed, which frees the space again."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(exc, (OSError, RuntimeError)):
        return False
    place = Path(where).expanduser().absolute()
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        return shutil.disk_usage(place).free < LOW_SPACE
    except OSError:
        return False


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# (path, inode, size, mtime_ns) -> sha256: a file is hashed once per process while it stays unchanged
# (a model folder is read by several loaders in turn, a shard folder by data prepare and then the trainer).
_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def known_sha256(path: Path) -> str:
    """``sha256_file``, read once per process while the file is unchanged (``_DIGESTS``)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def file_record(path: Path) -> dict[str, int | str]:
    """What a folder's checksum list records of one of its files: ``{"bytes", "sha256", "mtime_ns"}``."""
    st = path.stat()
    return {"bytes": st.st_size, "sha256": sha256_file(path), "mtime_ns": st.st_mtime_ns}


def check_record(path: Path, record: dict, error: type[MaskLMError], fix: str, *, trust_mtime: bool = False) -> None:
    """``error`` naming ``path`` unless it has the recorded size and sha256. With ``trust_mtime`` a file whose
    size and modification time are still those recorded is not read at all (for big memory-mapped files
    that a run reads only in part); any other file is hashed, once per process while it is unchanged."""
    if not path.is_file():
        raise error(f"{path} is missing; {fix}")
    st = path.stat()
    if st.st_size != record["bytes"]:
        raise error(f"{path} is {st.st_size} bytes, but {record['bytes']} were written; {fix}")
    if trust_mtime and record.get("mtime_ns") == st.st_mtime_ns:
        return
    if known_sha256(path) != record["sha256"]:
        raise error(f"{path} does not match its checksum (it changed or was damaged after it was written); {fix}")


def check_writable(out: str | Path, flag: str = "--out") -> None:
    """ConfigError (one line, before any work is done) when ``out`` cannot be created: a parent is a file,
    or the nearest existing folder refuses a new entry (read-only, /proc). Checked by making and removing an
    empty temporary folder there, since permission bits say nothing when running as root."""
    target = Path(out).expanduser().absolute()
    if target.is_dir():
        parent = target
    else:
        parent = target.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise ConfigError(f"{flag} {out}: {parent} is a file, not a folder; choose a path in a folder")
    try:
        probe = Path(tempfile.mkdtemp(prefix=PROBE_PREFIX, dir=parent))
    except OSError as exc:
        raise ConfigError(f"{flag} {out}: cannot write in {parent} ({exc.strerror}); choose a writable folder") from None
    probe.rmdir()


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries (so a rename into it survives a crash), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder``, ``folder`` itself last."""
    for root, _, names in os.walk(folder, topdown=False):
        for name in names:
            fsync_path(Path(root) / name)
        fsync_path(Path(root))


def usual_modes(folder: Path) -> None:
    """Give every file under ``folder`` at least the permissions a new file gets here (0666 less the umask):
    some writers make theirs private (safetensors' ``save_file``: 0600), so a model folder's weights were
    unreadable to the group that could read its config."""
    umask = os.umask(0o022)
    os.umask(umask)
    usual = 0o666 & ~umask
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            mode = path.lstat().st_mode
            if not path.is_symlink() and (mode | usual) != mode:
                os.chmod(path, (mode | usual) & 0o7777)


def _sibling(out: Path, kind: str) -> Path:
    """A hidden, unique name beside ``out``: ``.NAME.KIND-xxxxxxxx`` (never listed as a result)."""
    return out.with_name(f".{out.name}.{kind}-{uuid.uuid4().hex[:8]}")


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out``; an existing ``out`` is swapped out, then deleted."""
    old = None
    if out.exists() or out.is_symlink():
        old = _sibling(out, "old")
        os.replace(out, old)
    os.replace(tmp, out)
    fsync_path(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def empty_locked_dir(folder: str | Path) -> None:
    """Delete everything in a folder this process holds (``folder_lock``) but the lock file, which keeps the
    folder held: its entries move into a hidden sibling, which is then deleted. (Renaming the whole folder
    aside would take the lock file with it, and a second run could then lock a new one.)"""
    folder = Path(folder)
    aside = _sibling(folder, "old")
    aside.mkdir()
    for entry in folder.iterdir():
        if entry.name != LOCK_NAME:
            os.replace(entry, aside / entry.name)
    fsync_path(folder)
    shutil.rmtree(aside, ignore_errors=True)


def make_dirs(folder: str | Path) -> Path | None:
    """Create ``folder`` and its missing parents -> the topmost folder created (what to remove to leave the
    disk as it was), or None when ``folder`` exists (a file under that name is left for the caller's checks
    to refuse). ConfigError (one line) when it cannot be created."""
    folder = Path(folder).expanduser().absolute()
    if folder.exists() or folder.is_symlink():
        return None
    check_writable(folder)
    top = folder
    while not top.parent.exists():
        top = top.parent
    folder.mkdir(parents=True, exist_ok=True)
    return top


@contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Write a folder atomically: ``with atomic_dir(out) as tmp:`` fill ``tmp``; on a normal exit every
    file is flushed and ``tmp`` replaces ``out`` (see ``_replace_dir``); on an error ``tmp`` is removed and
    ``out`` is left as it was. The parent folders are created; NotADirectoryError when ``out`` is a file."""
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        usual_modes(tmp)
        fsync_tree(tmp)
        _replace_dir(tmp, out)
    except BaseException as exc:
        full = disk_full(exc, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise DiskFull(out) from None
        raise


@contextmanager
def atomic_file(out: str | Path) -> Iterator[Path]:
    """Write a file atomically: ``with atomic_file(out) as tmp:`` write ``tmp``; on a normal exit it is
    flushed and renamed to ``out``; on an error it is removed and ``out`` is left as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out, "tmp")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, out)
    except BaseException as exc:
        full = disk_full(exc, tmp)
        tmp.unlink(missing_ok=True)
        if full:
            raise DiskFull(out) from None
        raise


def _within(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def check_out(out: str | Path, *, overwrite: bool, sources: tuple[str | Path, ...] = (), flag: str = "--out",
              folder: bool = True) -> None:
    """Refuse to write over what a user made: ``out`` that already holds anything (a non-empty folder, or a
    file) needs ``overwrite``; even then it may not be, hold or sit inside anything the command reads
    (``sources``: files or folders; names that are no path here, such as built-in corpora, are passed
    over); a ``folder`` output may not be an existing file; and it must be writable (``check_writable``).
    Raises ConfigError (exit 2) before anything is written."""
    target = Path(out).expanduser().absolute()
    for source in sources:
        src = Path(source).expanduser().absolute()
        if not src.exists():
            continue
        if _within(target.resolve(), src.resolve()) or _within(src.resolve(), target.resolve()):
            raise ConfigError(f"{flag} {out} would replace {source}, which this command reads; choose another {flag}")
    if folder and (target.is_file() or (target.is_symlink() and not target.is_dir())):
        raise ConfigError(f"{flag} {out} is a file; choose a folder (a new or empty one, or pass --overwrite to "
                          "replace a folder's contents)")
    holds = target.is_file() or target.is_symlink() or (target.is_dir() and any(target.iterdir()))
    if holds and not overwrite:
        what = "already exists and holds files" if folder else "already exists"
        raise ConfigError(f"{flag} {out} {what}; pass --overwrite to replace it, or choose another {flag}")
    check_writable(target, flag)


@contextmanager
def folder_lock(folder: str | Path, what: str, enabled: bool = True) -> Iterator[None]:
    """Hold ``folder`` for this process while the block runs; ConfigError (exit 2) at once when another
    process holds it. The folder must exist (``make_dirs`` first: a folder made without a lock is one a
    second process could write at the same time); one that does not is not locked. The lock file is removed
    afterwards when this call made it, so a refused run leaves the folder as it was."""
    path = Path(folder) / LOCK_NAME
    if not enabled or fcntl is None or not path.parent.is_dir():
        yield
        return
    made = not path.exists()
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the whole block
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            made = False  # it is the holder's
            raise FolderInUse(f"{folder} is in use by {holder}; wait for it to end, or choose another "
                              "folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{what} (pid {os.getpid()})")
        handle.flush()
        yield
    finally:
        if made:
            path.unlink(missing_ok=True)
        handle.close()  # closing drops the lock
