"""``POST /generate`` with ``"return_steps": true``: the canvas after every network call (the playground's
animation, or any client that wants to watch parallel decoding).

The generator can keep a copy of every canvas the network is called on (``Network(trace=True)``,
``masklm.generation.sampling``). A *step* is one network call, so ``len(trace) == network_calls``. The
canvas after step k is the input of call k + 1 (in mask-predict it already holds the positions re-masked
for that call) or, after the last call, the final text. Between two such canvases a position can only go
from [MASK] to a token (*committed* at that step) or from a token to [MASK] (*re-masked*: mask-predict
revises its least confident tokens); a token is never replaced without passing through [MASK], since
every strategy writes only at masked positions.

Left-to-right decoding feeds the network prefixes (with the key/value cache, one token per call), not
canvases: its call k predicts column ``lo + k`` (``lo`` = the first generated column), so the canvas after
it is the final row with the later generated columns still masked.

The columns shown are the prompt's or template's tokens without [CLS]/[SEP]/[PAD], and the generated
columns, cut after the [SEP] that ended a ``stop_at_sep`` continuation (the text ends there).
"""

from __future__ import annotations

from typing import Any

from masklm.errors import InputError
from masklm.generation import CALL_FIELDS, GenerationConfig, generate
from masklm.generation.canvas import template_rows


def generate_with_steps(pipe, params: dict[str, Any]) -> dict[str, Any]:
    """``pipe.generate(**params)``'s result for one prompt or template, plus ``canvas`` (the starting
    tokens) and ``trace`` (per network call: ``tokens``, ``committed`` and ``remasked`` indices into them)."""
    params = dict(params)
    prompt, template = params.pop("prompt", None), params.pop("template", None)
    if params.get("length_beam", 1) != 1:
        raise InputError("return_steps shows one canvas; length_beam decodes several, so leave one of them out")
    config = GenerationConfig(**{"objectives": pipe.objectives, "max_length": pipe.max_length, **params,
                                 "trace": True})
    out = generate(pipe.model, pipe.tokenizer, prompt, config, template=template)
    result = out["results"][0] | {k: out[k] for k in CALL_FIELDS}
    inputs = [x[0].tolist() for x in out["network"].inputs]  # one row per call (batch of 1)
    start, gen = _start_row(pipe, inputs, template, out["strategy"])
    final = _final_row(start, gen, result["token_ids"], pipe.tokenizer.sep_id)
    shown = _shown_columns(start, gen, len(result["token_ids"]), set(pipe.tokenizer.special_ids))
    mask_id = pipe.tokenizer.mask_id
    if out["strategy"] == "autoregressive":
        lo = gen.index(True)
        states = [[mask_id if g and c >= lo + k else t for c, (t, g) in enumerate(zip(final, gen))]
                  for k in range(len(inputs))]
    else:
        states = inputs
    states = states + [final]
    piece = pipe.tokenizer.id_to_token
    trace = []
    for before, after in zip(states, states[1:]):
        trace.append({
            "tokens": [piece(after[c]) for c in shown],
            "committed": [i for i, c in enumerate(shown) if before[c] == mask_id != after[c]],
            "remasked": [i for i, c in enumerate(shown) if before[c] != mask_id == after[c]],
        })
    return result | {"canvas": [piece(states[0][c]) for c in shown], "trace": trace}


def _start_row(pipe, inputs: list[list[int]], template: str | None, strategy: str) -> tuple[list[int], list[bool]]:
    """The canvas before the first call -> (ids, generated flags), one entry per column."""
    tok = pipe.tokenizer
    if template is not None:  # the template's words follow the gap too; a prefix would not show them
        return template_rows(tok, [template], pipe.max_length)[0]
    first = inputs[0]
    if strategy != "autoregressive":  # the first call sees every generated column masked
        return first, [t == tok.mask_id for t in first]
    # the first call sees the prompt alone, and each call generates one column
    return first + [tok.mask_id] * len(inputs), [False] * len(first) + [True] * len(inputs)


def _final_row(start: list[int], gen: list[bool], token_ids: list[int], sep_id: int) -> list[int]:
    """``start`` with the generated columns filled in order; a column past the text held the stop [SEP]."""
    final = list(start)
    columns = [c for c, g in enumerate(gen) if g]
    for c, t in zip(columns, token_ids):
        final[c] = t
    if len(token_ids) < len(columns):  # stop_at_sep: the text ended at a generated [SEP]
        final[columns[len(token_ids)]] = sep_id
    return final


def _shown_columns(start: list[int], gen: list[bool], kept: int, specials: set[int]) -> list[int]:
    """Columns to show: the prompt's non-special tokens and the generated ones up to the stop [SEP]."""
    shown, ordinal = [], 0
    for c, (t, g) in enumerate(zip(start, gen)):
        if g:
            if ordinal <= kept:
                shown.append(c)
            ordinal += 1
        elif t not in specials:
            shown.append(c)
    return shown
