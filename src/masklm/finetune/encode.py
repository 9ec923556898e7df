"""Token ids for fine-tuning and prediction: text (pairs), and pre-split words with their first sub-tokens.
Nothing is truncated: an input longer than the model's maximum is an InputError that says so (the check
and the padding are ``masklm.inference.batching``'s)."""

from __future__ import annotations

import re

from masklm.errors import InputError
from masklm.inference.batching import check_length
from masklm.tokenizer import Tokenizer

_WORD = re.compile(r"\S+")


def encode_text(tokenizer: Tokenizer, text: str, pair: str | None, max_length: int, where: str) -> list[int]:
    """``[CLS] text [SEP]`` or ``[CLS] text [SEP] pair [SEP]`` ids."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{where}: the text is empty or not a string; pass non-empty text")
    enc = tokenizer.backend.encode(text, pair) if pair is not None else tokenizer.encode(text)
    check_length(len(enc.ids), max_length, where)
    return list(enc.ids)


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Whitespace-separated words of ``text`` and their character spans (how ``tag`` reads raw text)."""
    matches = list(_WORD.finditer(text))
    return [m.group() for m in matches], [m.span() for m in matches]


def encode_words(tokenizer: Tokenizer, words: list[str], max_length: int, where: str
                 ) -> tuple[list[int], list[int]]:
    """Ids of pre-split ``words`` with specials, and each word's first sub-token position (-1 when the
    tokenizer gives a word no tokens)."""
    if not words:
        raise InputError(f"{where}: no words; pass non-empty text")
    enc = tokenizer.backend.encode(words, is_pretokenized=True)
    check_length(len(enc.ids), max_length, where)
    first = [-1] * len(words)
    for pos, word_id in enumerate(enc.word_ids):
        if word_id is not None and first[word_id] < 0 and not enc.special_tokens_mask[pos]:
            first[word_id] = pos
    return list(enc.ids), first

