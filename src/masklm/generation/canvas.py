"""The canvas every strategy writes on, built from prompts or infilling templates, and read back as text.

A row is ``[CLS] prompt [MASK]*length`` (continuation) or ``[CLS] The [MASK] [MASK] of the king [SEP]``
(a template; ``[MASK]*5`` stands for five masks). Rows are right-padded to one width ``W``. ``gen`` marks
the positions a strategy may write; every other position (the prompt, the template's words, the
special tokens, the padding) is never changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from masklm.errors import InputError
from masklm.inference.batching import check_length, mask_or_none, pad


@dataclass
class Canvas:
    """ids ``[B, W]`` long; attention ``[B, W]`` long (1 = real token); gen ``[B, W]`` bool (to be generated);
    lo: first column holding a generated position in any row (the network's head runs on ``lo..W-1``)."""

    ids: torch.Tensor
    attention: torch.Tensor
    gen: torch.Tensor
    lo: int

    @property
    def width(self) -> int:
        return self.ids.shape[1]

    def padding_mask(self) -> torch.Tensor | None:
        """The attention mask to pass to ``encode``, or None when no row is padded."""
        return mask_or_none(self.attention)


def expand_template(template: str, mask_token: str, max_length: int = 1 << 20) -> str:
    """``"a [MASK]*3 b"`` -> ``"a [MASK] [MASK] [MASK] b"``; InputError for ``*0``, for more masks than
    ``max_length`` (checked before anything is built), or for no mask at all."""
    pattern = re.compile(re.escape(mask_token) + r"(?:\*(\d+))?")
    if not pattern.search(template):
        raise InputError(f"template {template[:60]!r} has no {mask_token}; mark the span to fill with "
                         f"{mask_token} or {mask_token}*N (N tokens)")

    def repl(match: re.Match) -> str:
        n = 1 if match.group(1) is None else int(match.group(1))
        if n < 1:
            raise InputError(f"{match.group(0)!r} in template {template[:60]!r} asks for no tokens; use N >= 1")
        if n > max_length:
            raise InputError(f"{match.group(0)[:40]!r} in template {template[:60]!r} asks for more tokens than the "
                             f"model's maximum of {max_length}")
        return " ".join([mask_token] * n)

    return pattern.sub(repl, template)


def _with_cls(ids: list[int], tokenizer) -> list[int]:
    return ids if ids and ids[0] == tokenizer.cls_id else [tokenizer.cls_id] + ids


def prompt_rows(tokenizer, prompts: list[str | None], lengths: list[int]) -> list[tuple[list[int], list[bool]]]:
    """Continuation rows: ``[CLS] prompt [MASK]*length`` with the gen flags; one per (prompt, length)."""
    rows = []
    for i, (prompt, n) in enumerate(zip(prompts, lengths)):
        if prompt is not None and not isinstance(prompt, str):
            raise InputError(f"prompt {i} is {type(prompt).__name__}, not a string; pass text or None")
        if prompt and tokenizer.mask_token in prompt:
            raise InputError(f"prompt {i} contains {tokenizer.mask_token}; pass it as the template to fill it in "
                             "(template=... in Python, --template, or the server's parameters.template)")
        ids = _with_cls(tokenizer.encode(prompt or "", add_special_tokens=False).ids, tokenizer)
        rows.append((ids + [tokenizer.mask_id] * n, [False] * len(ids) + [True] * n))
    return rows


def template_rows(tokenizer, templates: list[str], max_length: int) -> list[tuple[list[int], list[bool]]]:
    """Infilling rows: the template with specials, every [MASK] a position to generate."""
    rows = []
    for i, template in enumerate(templates):
        if not isinstance(template, str):
            raise InputError(f"template {i} is {type(template).__name__}, not a string; pass text")
        ids = _with_cls(tokenizer.encode(expand_template(template, tokenizer.mask_token, max_length)).ids, tokenizer)
        rows.append((ids, [t == tokenizer.mask_id for t in ids]))
    return rows


def build_canvas(rows: list[tuple[list[int], list[bool]]], pad_id: int, max_length: int,
                 device: torch.device) -> Canvas:
    """Right-pad rows into a Canvas; InputError if a row is longer than ``max_length``."""
    check_length(max(len(ids) for ids, _ in rows), max_length, "the prompt plus length",
                 fix="ask for fewer tokens or shorten the prompt")
    ids, attention = pad([ids for ids, _ in rows], pad_id)                         # [B, W] each
    gen = pad([flags for _, flags in rows], 0)[0].bool()                           # [B, W]
    lo = int(gen.any(0).nonzero()[0, 0])
    return Canvas(ids.to(device), attention.to(device), gen.to(device), lo)


def read_rows(canvas: Canvas, tokenizer, stop_at_sep: bool) -> list[dict]:
    """Per row: ``text`` (the whole sequence, specials dropped), ``generated`` (the new text), ``token_ids``
    and ``tokens`` of the generated positions. With ``stop_at_sep`` a row ends before its first
    generated [SEP]."""
    out = []
    ids, gen, att = canvas.ids.tolist(), canvas.gen.tolist(), canvas.attention.tolist()
    for row, flags, real in zip(ids, gen, att):
        keep, new = [], []
        for tid, is_gen, is_real in zip(row, flags, real):
            if not is_real:
                break
            if is_gen and stop_at_sep and tid == tokenizer.sep_id:
                break
            keep.append(tid)
            if is_gen:
                new.append(tid)
        out.append({
            "text": tokenizer.decode(keep),
            "generated": tokenizer.decode(new),
            "tokens": [tokenizer.id_to_token(t) for t in new],
            "token_ids": new,
        })
    return out
