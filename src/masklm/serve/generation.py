"""``POST /generate``: which ``Pipeline.generate`` arguments a request may set, and their bounds.

A request sets the template and the sampling settings of ``GenerationConfig.REQUEST_FIELDS``; never
``objectives``, ``max_length``, ``cache``, ``eps`` or ``trace``, which the server owns. Lengths, steps and
beams, and their product (``--max-generate-cost``), are bounded before any work: a template's
``[MASK]*N`` spans are counted from the text, so ``[MASK]*1000000000`` is refused, not expanded. The settings are then checked by ``GenerationConfig``
itself, still on the event loop, so a bad request never waits for the model.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from masklm.errors import InputError
from masklm.generation.config import REQUEST_FIELDS, GenerationConfig
from masklm.serve.limits import Limits, ServeError, check_cost, check_range, token_lengths

ALLOWED = ("template", *REQUEST_FIELDS)
MAX_LENGTH_BEAM = 8


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


SEED_LIMIT = 2**63 - 1  # the largest seed torch.Generator takes


def check_generate(prompt: str | None, parameters: dict[str, Any], limits: Limits, tok,
                   objectives: list[str] | None = None) -> dict[str, Any]:
    """``Pipeline.generate`` kwargs within the server's bounds; without a ``seed``, a random one (the route
    returns it, so a call can be repeated). Without a ``strategy`` the pipeline picks one from the model's ``objectives``, as
    ``masklm generate`` does (the answer's ``why`` says which and why); the cost bound is checked on that."""
    params = dict(parameters)
    unknown = sorted(set(params) - set(ALLOWED))
    if unknown:
        raise ServeError(f"unknown generation parameter(s) {', '.join(unknown)}; accepted: "
                         f"{', '.join(sorted(ALLOWED))}")
    _int("length", params.get("length"), limits.max_generate_length)
    _int("block_length", params.get("block_length"), limits.max_generate_length)
    _int("steps", params.get("steps"), limits.max_generate_steps)
    _int("length_beam", params.get("length_beam"), MAX_LENGTH_BEAM)
    _int("draft_length", params.get("draft_length"), limits.max_generate_length)
    _int("no_repeat_ngram_size", params.get("no_repeat_ngram_size"), limits.max_generate_length)
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
    if params.get("seed") is None:  # sampled text differs from call to call, as in TGI; the answer says the seed
        params["seed"] = secrets.randbelow(SEED_LIMIT + 1)
    if isinstance(params["seed"], bool) or not isinstance(params["seed"], int):
        raise ServeError(f"parameters.seed must be an integer, got {params['seed']!r}")
    params.setdefault("strategy", None)  # picked from the objectives by the pipeline (steps.py too)
    try:
        config = GenerationConfig(**{k: v for k, v in params.items() if k in REQUEST_FIELDS}, objectives=objectives)
        resolved = config.resolve(span if template is not None else None)  # the length and steps it will run
    except InputError as exc:
        raise ServeError(str(exc)) from None
    except TypeError as exc:  # a value of the wrong type, e.g. a string for temperature
        raise ServeError(f"a generation parameter has the wrong type ({exc})") from None
    # threshold and speculative decoding run no fixed number of steps; at worst each call commits one token
    steps = resolved.steps if resolved.steps is not None else resolved.length
    check_cost("this generation", resolved.length * steps * resolved.length_beam,
               "length x steps x length_beam", limits.max_generate_cost, "--max-generate-cost",
               "ask for fewer tokens, steps or lengths")
    return params
