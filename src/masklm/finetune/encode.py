"""Token ids for fine-tuning and prediction: text (pairs), pre-split words with their first sub-tokens, and
question + context pairs for extractive question answering.

Without windows nothing longer than the model's maximum is accepted: such an input is an InputError that
says so (the check and the padding are ``masklm.inference.batching``'s). With a ``WindowSpec`` an input of
any length is read as overlapping windows (``batching.window_rows``): each window is ``[CLS] piece [SEP]``
(a text pair: ``[CLS] piece [SEP] pair [SEP]``, the pair whole in every window; question answering:
``[CLS] question [SEP] piece [SEP]``, the question whole and the context cut), BERT's template, which
masklm's tokenizers and imported BERT tokenizers use. An input that fits gives one window equal to its
plain encoding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from masklm.errors import InputError
from masklm.inference.batching import WINDOWS_FIX, WindowSpec, check_length, window_rows
from masklm.tokenizer import Tokenizer

_WORD = re.compile(r"\S+")


def _check_text(text: object, where: str, name: str = "the text") -> None:
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{where}: {name} is empty or not a string; pass non-empty text")


def encode_text(tokenizer: Tokenizer, text: str, pair: str | None, max_length: int, where: str) -> list[int]:
    """``[CLS] text [SEP]`` or ``[CLS] text [SEP] pair [SEP]`` ids."""
    _check_text(text, where)
    enc = tokenizer.backend.encode(text, pair) if pair is not None else tokenizer.encode(text)
    check_length(len(enc.ids), max_length, where, fix=WINDOWS_FIX)
    return list(enc.ids)


def encode_text_windows(tokenizer: Tokenizer, text: str, pair: str | None, max_length: int, spec: WindowSpec,
                        where: str) -> list[list[int]]:
    """The windows over ``text`` (see the module docstring) -> one id row per window."""
    _check_text(text, where)
    content = tokenizer.encode(text, add_special_tokens=False).ids
    tail = [tokenizer.sep_id]
    if pair is not None:
        _check_text(pair, where, "the text pair")
        tail += tokenizer.encode(pair, add_special_tokens=False).ids + [tokenizer.sep_id]
    rows, _ = window_rows(content, [tokenizer.cls_id], tail, max_length, spec, where)
    return rows


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Whitespace-separated words of ``text`` and their character spans (how ``tag`` reads raw text)."""
    matches = list(_WORD.finditer(text))
    return [m.group() for m in matches], [m.span() for m in matches]


def _first_pieces(word_ids: list[int | None], special: list[int], n_words: int) -> list[int]:
    first = [-1] * n_words
    for pos, word_id in enumerate(word_ids):
        if word_id is not None and first[word_id] < 0 and not special[pos]:
            first[word_id] = pos
    return first


def encode_words(tokenizer: Tokenizer, words: list[str], max_length: int, where: str
                 ) -> tuple[list[int], list[int]]:
    """Ids of pre-split ``words`` with specials, and each word's first sub-token position (-1 when the
    tokenizer gives a word no tokens)."""
    if not words:
        raise InputError(f"{where}: no words; pass non-empty text")
    enc = tokenizer.backend.encode(words, is_pretokenized=True)
    check_length(len(enc.ids), max_length, where, fix=WINDOWS_FIX)
    return list(enc.ids), _first_pieces(enc.word_ids, enc.special_tokens_mask, len(words))


def encode_words_windows(tokenizer: Tokenizer, words: list[str], max_length: int, spec: WindowSpec, where: str
                         ) -> tuple[list[list[int]], list[tuple[int, int]], list[int]]:
    """Windows over pre-split ``words`` -> (id rows, each window's content span ``(a, b)``, each word's first
    sub-token as a content position, -1 for none). Content position p sits at row position ``p - a + 1``."""
    if not words:
        raise InputError(f"{where}: no words; pass non-empty text")
    enc = tokenizer.backend.encode(words, is_pretokenized=True, add_special_tokens=False)
    rows, spans = window_rows(enc.ids, [tokenizer.cls_id], [tokenizer.sep_id], max_length, spec, where)
    return rows, spans, _first_pieces(enc.word_ids, enc.special_tokens_mask, len(words))


@dataclass
class QAWindows:
    """A question + context pair as windows: ``rows`` (id rows), ``spans`` (each window's context token
    span ``(a, b)``), ``offsets`` (each context token's character span in the context) and ``first``
    (the row position of a window's first context token: ``len(question) + 2``)."""

    rows: list[list[int]]
    spans: list[tuple[int, int]]
    offsets: list[tuple[int, int]]
    first: int

    def token_span(self, start: int, end: int) -> tuple[int, int] | None:
        """The context tokens ``(first, last)`` covering the characters ``[start, end)``; None when no token
        overlaps them."""
        hit = [i for i, (a, b) in enumerate(self.offsets) if a < end and b > start and b > a]
        return (hit[0], hit[-1]) if hit else None


def encode_qa(tokenizer: Tokenizer, question: str, context: str, max_length: int, spec: WindowSpec,
              where: str) -> QAWindows:
    """``[CLS] question [SEP] context-window [SEP]`` rows over a context of any length."""
    _check_text(question, where, "the question")
    _check_text(context, where, "the context")
    q = tokenizer.encode(question, add_special_tokens=False).ids
    enc = tokenizer.encode(context, add_special_tokens=False)
    if not enc.ids:
        raise InputError(f"{where}: the context has no tokens; pass text")
    head = [tokenizer.cls_id, *q, tokenizer.sep_id]
    rows, spans = window_rows(enc.ids, head, [tokenizer.sep_id], max_length, spec, f"{where}: the question")
    return QAWindows(rows, spans, [tuple(o) for o in enc.offsets], len(head))
