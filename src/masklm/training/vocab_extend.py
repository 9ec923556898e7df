"""Domain vocabulary: add a domain corpus's most useful whole words to a model's tokenizer and embeddings.

Continued pretraining on a domain corpus keeps the general vocabulary, so frequent domain terms
("troponin", "EBITDA") stay split into pieces and the model never sees them whole. ``extend_model_dir``
picks the words, adds them to the tokenizer, grows every vocabulary-sized tensor and writes a complete
model folder that ``masklm train --init-from`` continues from.

Which words. A *word* is what the tokenizer's normalizer and pre-tokenizer make of the text (WordPiece:
"troponin"; byte-level BPE: "Ġtroponin", the word with its leading space). A word the tokenizer spells in
k >= 2 pieces, seen f >= ``min_frequency`` times in the domain text, scores f * (k - 1): the tokens a
whole-word entry saves on that text. The ``add`` best are taken (ties by the word, so runs agree); words
that hold an [UNK] piece have no pieces to start from and are left out (counted).

How they enter the tokenizer.
- WordPiece: vocabulary entries. WordPiece takes the longest vocabulary entry at a word's start, so an
  added word comes out whole wherever the pre-tokenizer makes it a word (after whitespace or punctuation,
  or first), and a longer word that starts with it ("troponins") keeps the whole stem.
- Byte-level BPE: merges, not added tokens. Added tokens are matched in the raw text before
  pre-tokenization: they do not carry the leading space that BPE spells into the word ("Ġtroponin"), so
  "the troponin" would cost an extra token for the space, decode and offsets would change at every match,
  and they match inside longer words unless marked single-word. A chain of merges (p1+p2, then p1p2+p3,
  ...) ranked after every existing merge leaves the tokenizer a plain BPE: existing merges fire first, so
  the word's pieces are the old ones, then the chain joins them; words added earlier stay whole, because
  later merges only fire once earlier ones are exhausted (the word is then one token). The price: a word of
  k pieces adds k - 2 intermediate tokens besides itself (counted in the report); they can also shorten
  other words that contain them. The chain is computed with BPE's own rule (lowest rank first, then
  leftmost) and every added word is checked to encode as one token by the new tokenizer.

Embeddings. A new token's row in every vocabulary-sized tensor (the word embeddings, which are also the
tied MLM decoder, and the decoder bias: BERT's ``cls.predictions.bias``, LTG-BERT's ``classifier.bias``;
found by building the model on the meta device at both sizes and comparing shapes, so any architecture
works) starts as the mean of the rows of the pieces the old tokenizer split it into (Gee et al., 2022,
"Fast Vocabulary Transfer for Language Model Compression"): the model's first guess for the new token is
its guess for the old pieces.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from masklm.errors import ConfigError, ModelDirError
from masklm.modeldir import (
    TRAINING_ARGS_FILE,
    WEIGHTS_FILE,
    check_state_dict,
    config_from_json,
    is_finetuned,
    load_tokenizer,
    load_weights,
    read_config,
    write_model_dir,
)
from masklm.models import build_model
from masklm.tokenizer import Tokenizer


@dataclasses.dataclass
class Candidate:
    """A domain word the tokenizer splits: its spelling, count and old pieces."""

    word: str
    frequency: int
    pieces: list[str]

    @property
    def score(self) -> int:
        return self.frequency * (len(self.pieces) - 1)


def pre_tokens(tokenizer: Tokenizer, text: str) -> list[str]:
    """The words of ``text`` as the tokenizer's normalizer and pre-tokenizer make them."""
    backend = tokenizer.backend
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    if backend.pre_tokenizer is None:
        return text.split()
    return [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(text)]


def pieces_of(tokenizer: Tokenizer, word: str) -> list[str]:
    """The pieces the tokenizer's model splits one pre-tokenized word into."""
    return [t.value for t in tokenizer.backend.model.tokenize(word)]


def count_words(tokenizer: Tokenizer, texts: Iterable[str]) -> Counter[str]:
    """How often each word (``pre_tokens``) occurs in ``texts``."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(pre_tokens(tokenizer, text))
    return counts


def rank_candidates(tokenizer: Tokenizer, counts: Counter[str], min_frequency: int = 2) -> tuple[list[Candidate], int]:
    """Words split into >= 2 pieces, seen >= ``min_frequency`` times, best score first ->
    (candidates, how many were left out for an [UNK] piece)."""
    ranked, unknown = [], 0
    for word, frequency in counts.items():
        if frequency < min_frequency:
            continue
        pieces = pieces_of(tokenizer, word)
        if tokenizer.unk_token in pieces:
            unknown += 1
            continue
        if len(pieces) < 2:
            continue
        ranked.append(Candidate(word, frequency, pieces))
    ranked.sort(key=lambda c: (-c.score, c.word))
    return ranked, unknown


def pieces_per_word(tokenizer: Tokenizer, texts: Iterable[str]) -> dict[str, float | int]:
    """Tokens per word on ``texts`` (no special tokens): ``{"words", "tokens", "pieces_per_word"}``."""
    words = tokens = 0
    for text in texts:
        words += len(pre_tokens(tokenizer, text))
        tokens += len(tokenizer.encode(text, add_special_tokens=False).ids)
    return {"words": words, "tokens": tokens, "pieces_per_word": tokens / words if words else 0.0}


def _bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """BPE's rule over ``pieces``: merge the lowest-ranked adjacent pair (leftmost on ties) until none is left."""
    pieces = list(pieces)
    while len(pieces) > 1:
        found = [(ranks[p], i) for i, p in enumerate(zip(pieces, pieces[1:])) if p in ranks]
        if not found:
            break
        _, i = min(found)
        pieces[i:i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def _check_supported(tokenizer: Tokenizer, data: dict[str, Any]) -> None:
    model = data["model"]
    if tokenizer.kind == "bpe":
        odd = [k for k in ("dropout", "continuing_subword_prefix", "end_of_word_suffix") if model.get(k)]
        if odd:
            raise ConfigError(f"vocabulary extension supports plain BPE; this tokenizer sets {odd[0]}")
    elif tokenizer.kind != "wordpiece":
        raise ConfigError(f"vocabulary extension supports WordPiece and BPE tokenizers, not {tokenizer.kind}")


def extend_tokenizer(tokenizer: Tokenizer, candidates: Iterable[Candidate], add: int
                     ) -> tuple[Tokenizer, list[Candidate], dict[str, list[str]]]:
    """Add the first ``add`` candidates as whole tokens -> (new tokenizer, words added,
    {every new token: its old pieces}). BPE also adds the chain's intermediate tokens (module docstring)."""
    data = json.loads(tokenizer.backend.to_str())
    _check_supported(tokenizer, data)
    vocab: dict[str, int] = data["model"]["vocab"]
    next_id = max(tokenizer.vocab_size, max(vocab.values(), default=-1) + 1)
    new_tokens: dict[str, list[str]] = {}

    def new_token(token: str) -> None:
        nonlocal next_id
        if token not in vocab:
            vocab[token] = next_id
            next_id += 1
            new_tokens[token] = pieces_of(tokenizer, token)

    added: list[Candidate] = []
    merges = data["model"].get("merges")
    ranks = {}
    if tokenizer.kind == "bpe":
        as_pairs = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges]
        ranks = {pair: rank for rank, pair in reversed(list(enumerate(as_pairs)))}
    for cand in candidates:
        if len(added) >= add:
            break
        if tokenizer.kind == "wordpiece":
            new_token(cand.word)
        else:
            current = _bpe(cand.pieces, ranks)  # earlier chains may already have joined some pieces
            if len(current) == 1:
                continue  # already whole: an intermediate of an earlier word
            joined = current[0]
            for piece in current[1:]:
                pair = (joined, piece)
                if pair not in ranks:
                    ranks[pair] = len(merges)
                    merges.append(list(pair) if not merges or isinstance(merges[0], list) else " ".join(pair))
                joined += piece
                new_token(joined)
        added.append(cand)
    specials = [tokenizer.pad_token, tokenizer.unk_token, tokenizer.cls_token, tokenizer.sep_token,
                tokenizer.mask_token]
    extended = Tokenizer(type(tokenizer.backend).from_str(json.dumps(data)), specials, tokenizer.model_max_length)
    for cand in added:
        got = pieces_of(extended, cand.word)
        if got != [cand.word]:  # a tokenizer model option this module does not know about
            raise ConfigError(f"the extended tokenizer still splits {cand.word!r} into {got}; "
                              "this tokenizer cannot be extended with whole words")
    return extended, added, new_tokens


def _vocab_tensors(config, new_size: int) -> dict[str, torch.Size]:
    """Names and new shapes of the tensors whose shape depends on the vocabulary size."""
    with torch.device("meta"):
        old = build_model(config).state_dict()
        new = build_model(dataclasses.replace(config, vocab_size=new_size)).state_dict()
    changed = {name: t.shape for name, t in new.items() if t.shape != old[name].shape}
    for name, shape in changed.items():
        if shape[0] != new_size or old[name].shape[1:] != shape[1:]:
            raise ModelDirError(f"tensor {name} does not grow along its first dimension with the vocabulary")
    return changed


def resize_vocabulary(state: dict[str, torch.Tensor], config, new_size: int,
                      rows: dict[int, list[int]]) -> dict[str, torch.Tensor]:
    """A copy of ``state`` whose vocabulary tensors have ``new_size`` rows; row i of each is the mean of its
    rows ``rows[i]`` (the old pieces' ids) for every new id i, and unchanged elsewhere."""
    out = dict(state)
    for name in _vocab_tensors(config, new_size):
        old = state[name]
        grown = torch.zeros((new_size, *old.shape[1:]), dtype=old.dtype)
        grown[:old.shape[0]] = old
        for i, pieces in rows.items():
            grown[i] = old[torch.tensor(pieces)].float().mean(0).to(old.dtype)
        out[name] = grown
    return out


def extend_model_dir(model_dir: str | Path, texts: Iterable[str], heldout: list[str], out: str | Path, *,
                     add: int, min_frequency: int = 2) -> dict[str, Any]:
    """Add the ``add`` best whole words of ``texts`` to the model folder ``model_dir``; write the result to
    ``out`` (replacing it: check it first) -> a report with pieces per word on ``heldout`` before and after."""
    if add < 1:
        raise ConfigError(f"--add must be >= 1 (got {add})")
    folder = Path(model_dir)
    data = read_config(folder)
    if is_finetuned(data):
        raise ModelDirError(f"{folder} is a fine-tuned model folder; extend the pretrained folder it came from, "
                            "then fine-tune the result")
    config = config_from_json(data, where=str(folder / "config.json"))
    tokenizer = load_tokenizer(folder, config)
    ranked, unknown = rank_candidates(tokenizer, count_words(tokenizer, texts), min_frequency)
    if not ranked:
        raise ConfigError("the domain corpus has no word the tokenizer splits into pieces that occurs at least "
                          f"{min_frequency} times; use a larger corpus or a lower --min-frequency")
    extended, added, new_tokens = extend_tokenizer(tokenizer, ranked, add)
    ids = {token: extended.token_to_id(token) for token in new_tokens}
    rows = {ids[t]: [tokenizer.token_to_id(p) for p in pieces] for t, pieces in new_tokens.items()}
    new_size = max(config.vocab_size, extended.vocab_size)
    state = load_weights(folder / WEIGHTS_FILE)
    state = resize_vocabulary(state, config, new_size, rows)
    new_config = dataclasses.replace(config, vocab_size=new_size)
    with torch.device("meta"):
        check_state_dict(state, build_model(new_config).state_dict(), where=str(folder / WEIGHTS_FILE))
    args_file = folder / TRAINING_ARGS_FILE
    training_args = json.loads(args_file.read_text(encoding="utf-8")) if args_file.is_file() else None
    write_model_dir(out, {**data, "vocab_size": new_size}, state, extended, training_args)
    return {
        "model": str(folder), "out": str(Path(out)), "words_added": len(added), "tokens_added": len(new_tokens),
        "vocab_size": [config.vocab_size, new_size], "candidates": len(ranked), "left_out_unknown": unknown,
        "heldout_before": pieces_per_word(tokenizer, heldout), "heldout_after": pieces_per_word(extended, heldout),
        "top": [{"word": c.word, "frequency": c.frequency, "pieces": c.pieces} for c in added[:20]],
    }
