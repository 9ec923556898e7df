"""Counts in text a person reads: "1 input", "3 inputs". One owner, so every message agrees in number."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun`` in the number ``n`` takes: ``counted(1, "pair")`` -> "1 pair", ``counted(2, "pair")``
    -> "2 pairs", ``counted(12345, "token")`` -> "12,345 tokens"; ``plural`` for nouns that do not take an s."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"
