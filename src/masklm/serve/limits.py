"""Request bounds and the server's error type.

Every request is bounded before it reaches the model: inputs per request, tokens per input, the body
size, ``top_k`` and the number of targets, generation length and steps, and the work it asks for
(``check_cost``): fill-mask builds and decodes one full sequence per candidate, so its cost is tokens x
masks x top_k summed over the inputs (one such request took 90 s and 1.46 GB before this bound); generate
runs ``steps`` network calls over ``length`` tokens for each of ``length_beam`` lengths (one prompt per
request). A request past a size or cost bound answers 413; a parameter out of range or malformed input
answers 422. Time is bounded too: a request not answered within ``request_timeout`` seconds gets 504 and
its work is dropped; a connection that has not sent a whole request within ``read_timeout`` seconds, or
sits idle ``keep_alive_timeout`` seconds after an answer, is closed (``masklm.serve.connections``).
The body of every error is ``{"error": message, "error_type": kind}``, the shape text-embeddings-inference
uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from masklm.inference.batching import check_length

# error_type -> HTTP status
STATUS = {
    "invalid_request": 422,
    "too_large": 413,
    "unsupported_media_type": 415,
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "overloaded": 429,
    "not_implemented": 501,
    "unhealthy": 503,
    "timeout": 504,
    "internal": 500,
}


class ServeError(Exception):
    """An error answered to the client as ``{"error", "error_type"}`` with the matching status."""

    def __init__(self, message: str, error_type: str = "invalid_request",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        self.status = STATUS[error_type]
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"error": self.message, "error_type": self.error_type}


SECONDS = ("request_timeout", "read_timeout", "keep_alive_timeout")


@dataclass
class Limits:
    """Server bounds (the ``masklm serve`` flags of the same names)."""

    max_inputs: int = 32             # texts per request
    max_tokens: int = 512            # tokens per input, special tokens included (<= the model's maximum)
    max_batch_tokens: int = 8192     # padded tokens per model call across batched requests
    max_queue: int = 256             # requests admitted (queued or running) before 429
    batch_wait_ms: float = 2.0       # how long the worker waits for more requests to batch
    max_top_k: int = 100
    max_targets: int = 100
    max_generate_length: int = 256
    max_generate_steps: int = 256
    max_body_bytes: int = 1 << 20
    max_fill_mask_cost: int = 1 << 21    # tokens x masks x top_k, summed over a request's inputs
    max_generate_cost: int = 1 << 16     # length x steps x length_beam (256 x 256 x 1 fits)
    request_timeout: float = 60.0        # seconds from admission to answer, queueing included; then 504
    read_timeout: float = 10.0           # seconds to receive a whole request (headers and body)
    keep_alive_timeout: float = 5.0      # seconds an idle connection is kept open after an answer

    def check(self, model_max_length: int) -> Limits:
        """Clamp to the model and reject impossible values (``ValueError`` with the flag's name)."""
        for name, value in asdict(self).items():
            flag = f"--{name.replace('_', '-')}"
            if name in SECONDS:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 86400:
                    raise ValueError(f"{flag} must be a number of seconds above 0 (at most 86400), got {value!r}")
            elif name != "batch_wait_ms" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{flag} must be a positive integer, got {value!r}")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise ValueError(f"--batch-wait-ms must be between 0 and 1000, got {self.batch_wait_ms}")
        self.max_tokens = min(self.max_tokens, model_max_length)
        self.max_batch_tokens = max(self.max_batch_tokens, self.max_tokens)
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def as_list(inputs: str | Sequence[str], field: str = "inputs") -> list[str]:
    """``inputs`` as a non-empty list of strings."""
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    if not texts:
        raise ServeError(f"{field} is empty; pass a string or a non-empty list of strings")
    return texts


def check_count(texts: Sequence[str], limits: Limits, field: str = "inputs") -> None:
    if len(texts) > limits.max_inputs:
        raise ServeError(f"{field} has {len(texts)} items, more than this server's limit of "
                         f"{limits.max_inputs} per request; split the request", "too_large")


def token_lengths(tokenizer, texts: Sequence[str], limits: Limits, field: str = "inputs") -> list[list[int]]:
    """Token ids of each text (special tokens included); 413 past ``max_tokens``, 422 for an empty text."""
    check_count(texts, limits, field)
    return check_encoded([enc.ids for enc in tokenizer.encode_batch(list(texts))], texts, limits, field)


def check_encoded(rows: list[list[int]], texts: Sequence[str], limits: Limits,
                  field: str = "inputs") -> list[list[int]]:
    """``rows`` (the token ids of ``texts``) unless one is past ``max_tokens`` (413) or a text is empty (422)."""
    for i, ids in enumerate(rows):
        check_tokens(len(ids), limits, f"{field}[{i}]")
        if not texts[i].strip():
            raise ServeError(f"{field}[{i}] is empty; pass some text")
    return rows


def check_tokens(n: int, limits: Limits, what: str) -> None:
    """413 when an input of ``n`` tokens (special tokens included) is past ``max_tokens``."""
    check_length(n, limits.max_tokens, what, whose="this server's limit",
                 error=lambda message: ServeError(message, "too_large"))


def check_range(name: str, value: int | None, low: int, high: int, status: str = "invalid_request") -> None:
    """422 (or ``status``) unless ``low <= value <= high``; ``None`` passes."""
    if value is not None and not low <= value <= high:
        raise ServeError(f"{name} must be between {low} and {high} on this server, got {value}", status)


def check_cost(what: str, cost: int, formula: str, limit: int, flag: str, fix: str) -> None:
    """413 when a request's ``cost`` (``formula``) is past ``limit``, naming the flag that raises it."""
    if cost > limit:
        raise ServeError(f"{what} asks for {cost:,} units of work ({formula}), more than this server's limit of "
                         f"{limit:,} ({flag}); {fix}", "too_large")
