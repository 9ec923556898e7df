"""User-facing errors.

Every error a user can cause by what they pass in (a path, a config, a text) is a ``MaskLMError``.
Its message is one line that names the problem and says what to do. The CLI prints it to stderr and
exits with status 2, without a traceback. Anything else that escapes is a bug (exit 1).
"""

from __future__ import annotations


class MaskLMError(Exception):
    """Base class: bad input that the user can fix."""


class ConfigError(MaskLMError):
    """An unknown key, a wrong type or an impossible value in a config or a flag."""


class FolderInUse(ConfigError):
    """A folder another process holds (``files.folder_lock``): the refused run must not touch it."""


class DiskFull(MaskLMError):
    """The disk an output is written to ran out of space (``files.atomic_dir`` / ``atomic_file`` left nothing
    half-written). ``then``: what to run once space is freed."""

    def __init__(self, where: object, then: str = "run the command again") -> None:
        self.where = where
        super().__init__(f"no space left on the disk holding {where}; nothing was left half-written: free some "
                         f"space, then {then}")


class DataError(MaskLMError):
    """A missing, empty or malformed corpus, shard folder or data file."""


class ModelDirError(MaskLMError):
    """A model folder that is missing files or does not match its config."""


class InputError(MaskLMError):
    """A request that cannot be served: no [MASK], too long, bad parameter."""


def out_of_memory(exc: BaseException, batch_size: int, seq_len: int, device: str | None) -> ConfigError | None:
    """The one-line error for an allocation that failed (CUDA's OutOfMemoryError, or the CPU allocator's
    RuntimeError), naming the settings that size it; None for any other error (a bug keeps its traceback)."""
    text = str(exc)
    if "can't allocate memory" not in text and "out of memory" not in text.lower():  # CPU allocator / CUDA
        return None
    return ConfigError(f"out of memory with --batch-size {batch_size} x --seq-len {seq_len} tokens "
                       f"on {device or 'the default device'} ({text.splitlines()[0][:120]}); lower --batch-size "
                       "or --seq-len (raise --grad-accum to keep the rows per step)")
