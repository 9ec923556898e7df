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


class DataError(MaskLMError):
    """A missing, empty or malformed corpus, shard folder or data file."""


class ModelDirError(MaskLMError):
    """A model folder that is missing files or does not match its config."""


class InputError(MaskLMError):
    """A request that cannot be served: no [MASK], too long, bad parameter."""
