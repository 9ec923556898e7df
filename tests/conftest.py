"""Shared fixtures for the data tests: a small synthetic corpus, two tokenizers, a CLI runner."""

from __future__ import annotations

import random

import pytest

from masklm.tokenizer import train_tokenizer

# Few distinct stems with long words, so a small vocabulary must split words into several pieces.
_WORDS = ("the of and unbelievable extraordinary counterproductive hello world river mountain "
          "quickly wandering shepherds lantern whispering").split()


def make_documents(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 40))) + "." for _ in range(n)]


@pytest.fixture(scope="session")
def documents() -> list[str]:
    return make_documents(60)


@pytest.fixture(scope="session")
def wordpiece_tokenizer(documents):
    return train_tokenizer(documents, kind="wordpiece", vocab_size=60, min_frequency=1)


@pytest.fixture(scope="session")
def bpe_tokenizer(documents):
    return train_tokenizer(documents, kind="bpe", vocab_size=300, min_frequency=2)


@pytest.fixture
def cli(monkeypatch):
    """Run ``masklm`` in-process with only the data commands registered -> exit status."""
    import masklm.cli

    monkeypatch.setattr(masklm.cli, "COMMAND_MODULES", ["corpus", "tokenizer", "data"])
    return masklm.cli.main
