"""``POST /generate``: which ``Pipeline.generate`` arguments a request may set, and their bounds.

Only an allow-list of sampling arguments reaches the generator (never ``objectives``, ``max_length`` or
``trace``, which the server owns). Lengths, steps and beams are bounded before any work: a template's
``[MASK]*N`` spans are counted from the text, so ``[MASK]*1000000000`` is refused, not expanded.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from masklm.serve.limits import Limits, ServeError, check_range, token_lengths

ALLOWED = ("template", "length", "strategy", "steps", "temperature", "top_k", "top_p", "seed", "stop_at_sep",
           "schedule", "commit", "choice_temperature", "block_length", "length_beam")
MAX_LENGTH_BEAM = 8


def generate_params(pipe) -> set[str] | None:
    """The allowed keyword arguments ``pipe.generate`` takes, or None when it has no ``generate``."""
    fn = getattr(pipe, "generate", None)
    if fn is None:
        return None
    params = inspect.signature(fn).parameters
    names = set(params)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):  # Pipeline.generate(prompt, **kwargs)
        try:
            from masklm.generation import generate
        except ImportError:  # pragma: no cover
            return set()
        names |= set(inspect.signature(generate).parameters)
    return names & set(ALLOWED)


def _int(name: str, value: Any, high: int) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise ServeError(f"parameters.{name} must be an integer, got {value!r}")
    check_range(f"parameters.{name}", value, 1, high)


def template_span(template: str, mask_token: str) -> int:
    """Tokens a template asks to generate: each mask counts 1, ``MASK*N`` counts N (not expanded)."""
    total = 0
    for m in re.finditer(re.escape(mask_token) + r"(?:\*(\d+))?", template):
        digits = m.group(1)
        total += 1 if digits is None else (int(digits) if len(digits) <= 9 else 10**9)
    return total


def check_generate(prompt: str | None, parameters: dict[str, Any], accepted: set[str], limits: Limits,
                   tok) -> dict[str, Any]:
    """Generation kwargs within the server's bounds; ``seed`` 0 by default, so output is reproducible."""
    params = dict(parameters)
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ServeError(f"unknown generation parameter(s) {', '.join(unknown)}; accepted: "
                         f"{', '.join(sorted(accepted))}")
    _int("length", params.get("length"), limits.max_generate_length)
    _int("block_length", params.get("block_length"), limits.max_generate_length)
    _int("steps", params.get("steps"), limits.max_generate_steps)
    _int("length_beam", params.get("length_beam"), MAX_LENGTH_BEAM)
    template = params.get("template")
    if template is not None:
        if not isinstance(template, str):
            raise ServeError("parameters.template must be a string such as 'The [MASK]*5 of the king'")
        span = template_span(template, tok.mask_token)
        check_range(f"the number of {tok.mask_token} in parameters.template", span, 1,
                    limits.max_generate_length)
        token_lengths(tok, [template], limits, "parameters.template")
    if prompt is not None:
        token_lengths(tok, [prompt], limits, "prompt")
        params["prompt"] = prompt
    if "seed" in accepted and params.get("seed") is None:
        params["seed"] = 0
    if isinstance(params.get("seed"), bool) or not isinstance(params.get("seed", 0), int):
        raise ServeError(f"parameters.seed must be an integer, got {params.get('seed')!r}")
    return params
