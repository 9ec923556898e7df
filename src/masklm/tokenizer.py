"""Tokenizers: train (WordPiece or byte-level BPE), save, load, decode, word boundaries and held-out coverage.

A thin wrapper over Hugging Face ``tokenizers``. Trained tokenizers put the special tokens
``[PAD] [UNK] [CLS] [SEP] [MASK]`` at ids 0..4 and wrap every text as ``[CLS] text [SEP]``.
A saved folder (``tokenizer.json`` + ``tokenizer_config.json``) also loads in
``transformers.AutoTokenizer.from_pretrained``.

Choices:
- WordPiece uses ``BertNormalizer(lowercase=False, strip_accents=False)``: the model is cased and
  keeps accents, so nothing the user wrote is lost before the model sees it.
- Byte-level BPE starts from all 256 bytes and has no normalizer, so any Unicode text round-trips.

Scripts written without spaces between words (Chinese, Japanese, Thai, Lao, Khmer, Myanmar: the Unicode
blocks in ``UNSPACED_RANGES``) have no whitespace to mark words. BERT's normalizer (and so WordPiece here)
puts a space around every CJK ideograph (Devlin et al.'s ``_tokenize_chinese_chars``, the ranges in
``IDEOGRAPH_RANGES``), so its decoder would write "北 京"; ``Tokenizer.decode`` takes those spaces out
again. ``word_starts`` treats each character of an unspaced script, or each token where a token spans
several (a word the tokenizer marked), as a word, so whole-word masking masks characters there rather
than a whole sentence. ``Tokenizer.normal_form(text)`` says what decode(encode(text)) gives back when no
piece is unknown: for byte-level BPE the text itself; for WordPiece the text after its normalizer (control
characters such as U+200D dropped, whitespace runs as one space, no lowercasing, accents kept) with words
and punctuation re-joined by its decoder's rules (e.g. "( groß )", "Hallo, Welt!").
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Encoding, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as _Backend

from masklm.config import read_json_object
from masklm.errors import ConfigError, ModelDirError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_SPECIAL_KEYS = ["pad_token", "unk_token", "cls_token", "sep_token", "mask_token"]
KINDS = ("wordpiece", "bpe")
# Hugging Face configs sometimes carry a sentinel (1e30) meaning "no limit"; BERT positions stop at 512.
_DEFAULT_MAX_LENGTH = 512

# CJK ideographs as BERT's normalizer isolates them (google-research/bert tokenization.py, _is_chinese_char).
IDEOGRAPH_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
                    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
# Scripts written without spaces between words: the ideographs above plus CJK radicals, symbols and
# punctuation, kana, bopomofo, the later CJK extensions, half-width kana, and Thai, Lao, Myanmar, Khmer
# (Unicode blocks; Korean hangul is written with spaces and is not here).
UNSPACED_RANGES = IDEOGRAPH_RANGES + (
    (0x0E00, 0x0E7F), (0x0E80, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x2E80, 0x2FDF),
    (0x3000, 0x303F), (0x3040, 0x30FF), (0x3100, 0x312F), (0x31F0, 0x31FF), (0x2EBF0, 0x2EE5F),
    (0x30000, 0x323AF), (0xFF65, 0xFF9F))


def _char_class(ranges: Sequence[tuple[int, int]]) -> str:
    return "[" + "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in ranges) + "]"


# Ideographs and full-width punctuation ("。", "，"): CJK text has no space beside them, so one there is a
# space the WordPiece decoder put between two words (it joins words with one space).
_JOINED = _char_class(IDEOGRAPH_RANGES + ((0x3001, 0x303F), (0xFF01, 0xFF65)))
_IDEOGRAPH_SPACE = re.compile(f"(?<={_JOINED}) (?=\\S)|(?<=\\S) (?={_JOINED})")
_UNSPACED = re.compile(_char_class(UNSPACED_RANGES))


def unspaced_chars(text: str) -> np.ndarray:
    """``[len(text)]`` bool: True at characters of scripts written without spaces (``UNSPACED_RANGES``)."""
    flags = np.zeros(len(text), dtype=bool)
    flags[[m.start() for m in _UNSPACED.finditer(text)]] = True
    return flags


class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus the names and ids of its special tokens.

    Attributes: ``backend``, ``pad_id``, ``unk_id``, ``cls_id``, ``sep_id``, ``mask_id``, the
    matching ``*_token`` strings, ``special_ids`` (sorted), ``vocab_size`` (with added tokens),
    ``model_max_length`` and ``kind`` ("wordpiece", "bpe" or the backend model's name).
    """

    def __init__(
        self,
        backend: _Backend,
        special_tokens: Sequence[str] = SPECIAL_TOKENS,
        model_max_length: int = _DEFAULT_MAX_LENGTH,
    ) -> None:
        # Data preparation needs whole documents; pipelines truncate themselves.
        backend.no_truncation()
        backend.no_padding()
        self.backend = backend
        ids = []
        for key, token in zip(_SPECIAL_KEYS, special_tokens):
            token_id = backend.token_to_id(token)
            if token_id is None:
                raise ModelDirError(
                    f"tokenizer has no {key} {token!r} in its vocabulary; "
                    f"set {key} in tokenizer_config.json to a token it has"
                )
            setattr(self, key, token)
            setattr(self, key.replace("_token", "_id"), token_id)
            ids.append(token_id)
        self.pad_id: int
        self.unk_id: int
        self.cls_id: int
        self.sep_id: int
        self.mask_id: int
        self.pad_token: str
        self.unk_token: str
        self.cls_token: str
        self.sep_token: str
        self.mask_token: str
        # Other added special tokens (e.g. <s> in a foreign tokenizer) are special too.
        extra = [tid for tid, tok in backend.get_added_tokens_decoder().items() if tok.special]
        self.special_ids: list[int] = sorted(set(ids) | set(extra))
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self.model_max_length = int(model_max_length)
        model_type = type(backend.model).__name__
        self.kind = {"WordPiece": "wordpiece", "BPE": "bpe"}.get(model_type, model_type.lower())
        # Whether the normalizer spaces out CJK ideographs (BERT's does), so decode must join them again.
        normalizer = backend.normalizer
        self.spaces_ideographs = normalizer is not None and " " in normalizer.normalize_str("\u4e00\u4e8c")

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"

    def with_max_length(self, model_max_length: int) -> Tokenizer:
        """The same tokenizer (same backend, same fingerprint) saying another ``model_max_length``."""
        copy = Tokenizer.__new__(Tokenizer)
        copy.__dict__.update(self.__dict__)
        copy.model_max_length = int(model_max_length)
        return copy

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = True) -> Encoding:
        return self.backend.encode(text, add_special_tokens=add_special_tokens)

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[Encoding]:
        return self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Token ids -> text; CJK ideographs the normalizer spaced out are joined again ("北京", not "北 京")."""
        return self._join(self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens))

    def decode_batch(self, rows: Sequence[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
        texts = self.backend.decode_batch([[int(i) for i in ids] for ids in rows],
                                          skip_special_tokens=skip_special_tokens)
        return [self._join(text) for text in texts]

    def _join(self, decoded: str) -> str:
        return _IDEOGRAPH_SPACE.sub("", decoded) if self.spaces_ideographs else decoded

    def normal_form(self, text: str) -> str:
        """What ``decode(encode(text))`` gives back when no piece is unknown: the text through the
        normalizer, split into words by the pre-tokenizer and spelled back by the decoder (joined as in
        ``decode``). Byte-level BPE: ``text`` itself. WordPiece: control characters dropped, whitespace runs as
        one space, words and punctuation joined by the decoder's rules (see the module docstring)."""
        backend = self.backend
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        words = [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(text)] if backend.pre_tokenizer else [text]
        if backend.decoder is None:
            return self._join(" ".join(words))
        return self._join(backend.decoder.decode(words))

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(int(token_id))

    def fingerprint(self) -> str:
        """sha256 of the backend's canonical JSON: equal fingerprints tokenize identically."""
        canonical = json.dumps(json.loads(self.backend.to_str()), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": self.model_max_length,
            "clean_up_tokenization_spaces": False,
            "masklm_tokenizer_kind": self.kind,
        }
        for key in _SPECIAL_KEYS:
            config[key] = getattr(self, key)
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Load a folder with ``tokenizer.json`` (and ``tokenizer_config.json`` when present)."""
        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise ModelDirError(
                f"no tokenizer.json in {directory}; train one with 'masklm tokenizer train' "
                "or point to a folder that has it"
            )
        try:
            backend = _Backend.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise ModelDirError(f"cannot read {path}: {' '.join(str(exc).split())}; re-save the tokenizer") from exc
        specials, max_length = _read_tokenizer_config(directory / "tokenizer_config.json")
        try:
            return cls(backend, specials, max_length)
        except ModelDirError as exc:
            raise ModelDirError(f"{directory}: {exc}") from None


def _read_tokenizer_config(path: Path) -> tuple[list[str], int]:
    """The special tokens and ``model_max_length`` of a ``tokenizer_config.json`` (defaults without one).

    A special token is a string, transformers' serialized AddedToken (``{"content": ...}``) or null; the
    length a positive number, where transformers' "no limit" sentinel (1e30) means the default."""
    specials, max_length = list(SPECIAL_TOKENS), _DEFAULT_MAX_LENGTH
    if not path.is_file():
        return specials, max_length
    config = read_json_object(path, ModelDirError, "fix or delete it")
    for i, key in enumerate(_SPECIAL_KEYS):
        value = config.get(key)
        if isinstance(value, dict):  # transformers' serialized AddedToken
            value = value.get("content")
        if isinstance(value, str):
            specials[i] = value
        elif value is not None:
            raise ModelDirError(f"{path}: {key} must be a token (a string), got {value!r}; fix or delete it")
    length = config.get("model_max_length")
    if length is not None:
        if isinstance(length, bool) or not isinstance(length, (int, float)) or not length >= 1:
            raise ModelDirError(f"{path}: model_max_length must be a positive number, got {length!r}; fix it")
        if length < 1_000_000:
            max_length = int(length)
    return specials, max_length


def _template(cls_id: int, sep_id: int) -> processors.TemplateProcessing:
    return processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )


def _wordpiece_backend(vocab: dict[str, int] | None = None) -> _Backend:
    """A cased BERT-style WordPiece tokenizer (empty, to train, or around ``vocab``)."""
    backend = _Backend(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##") if vocab
                       else models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend


def _continuation_pieces(texts: Iterable[str]) -> list[str]:
    """Every ``##c`` piece the WordPiece trainer will create for ``texts``, sorted (see ``_train_wordpiece``)."""
    probe = _wordpiece_backend()
    # No merges: the trainer only counts words, builds the alphabet and the ##c pieces (all of them,
    # whatever the vocabulary size).
    probe.train_from_iterator(texts, trainer=trainers.WordPieceTrainer(
        vocab_size=1, min_frequency=1, continuing_subword_prefix="##", show_progress=False))
    return sorted(t for t in probe.get_vocab() if t.startswith("##") and len(t) > 2)


def _train_wordpiece(texts: Callable[[], Iterable[str]], vocab_size: int, min_frequency: int) -> _Backend:
    """WordPiece training that gives the same vocabulary on every run.

    The tokenizers trainer creates a ``##c`` piece the first time it meets ``c`` inside a word, in hash
    map order, and those ids break ties between equally frequent merges; so two runs can pick different
    merges (huggingface/tokenizers#1794). Declaring every ``##c`` up front, in sorted order, fixes their
    ids; the real vocabulary is then rebuilt without marking them special. Costs a first, merge-free pass.
    """
    pieces = _continuation_pieces(texts())
    trained = _wordpiece_backend()
    trained.train_from_iterator(texts(), trainer=trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS + pieces,
        continuing_subword_prefix="##", show_progress=False))
    backend = _wordpiece_backend(trained.get_vocab())
    backend.add_special_tokens(SPECIAL_TOKENS)
    return backend


def vocab_shortfall(tokenizer: Tokenizer, asked: int, min_frequency: int | None = None) -> str | None:
    """One line when training gave fewer entries than ``asked`` (a small corpus runs out of pieces that
    occur ``min_frequency`` times), so nobody reads the smaller size as a bug; None when it gave them all."""
    if tokenizer.vocab_size >= asked:
        return None
    fix = "a larger corpus" + (", or a lower --min-frequency," if min_frequency and min_frequency > 1 else "")
    return (f"the vocabulary has {tokenizer.vocab_size} entries, not the {asked} asked for: the corpus has no "
            f"more pieces that occur often enough ({fix} gives more)")


def check_tokenizer_settings(kind: str, vocab_size: int, min_frequency: int) -> None:
    """ConfigError (one line) for settings ``train_tokenizer`` cannot train with, before any text is read."""
    if kind not in KINDS:
        raise ConfigError(f"unknown tokenizer kind {kind!r}; use one of {', '.join(KINDS)}")
    floor = len(SPECIAL_TOKENS) + (256 if kind == "bpe" else 1)
    if vocab_size < floor:
        raise ConfigError(f"vocab_size {vocab_size} is too small for {kind}; use at least {floor}")
    if min_frequency < 1:
        raise ConfigError(f"min_frequency must be >= 1 (got {min_frequency})")


def train_tokenizer(
    texts: Iterable[str] | Callable[[], Iterable[str]],
    kind: str = "wordpiece",
    vocab_size: int = 8192,
    min_frequency: int = 2,
    model_max_length: int = _DEFAULT_MAX_LENGTH,
) -> Tokenizer:
    """Train a WordPiece or byte-level BPE tokenizer; the same texts give the same tokenizer on every run.

    ``texts`` is a list of texts, or a function that returns a fresh stream of them (so a corpus is never
    held in memory: WordPiece reads it twice). Another one-shot iterable is read into a list first.
    """
    check_tokenizer_settings(kind, vocab_size, min_frequency)
    if not callable(texts):
        texts = texts if isinstance(texts, (list, tuple)) else list(texts)
        stream = lambda: texts  # noqa: E731 - the same list each pass
    else:
        stream = texts
    if kind == "wordpiece":
        backend = _train_wordpiece(stream, vocab_size, min_frequency)
    else:
        # No unk_token: with all 256 bytes in the alphabet every text is representable.
        backend = _Backend(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
        backend.train_from_iterator(stream(), trainer=trainer)
    ids = [backend.token_to_id(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(len(SPECIAL_TOKENS))), ids
    template = _template(ids[2], ids[3])
    if kind == "bpe":
        # trim_offsets drops the leading space from "Ġword" offsets, so word starts show as gaps.
        backend.post_processor = processors.Sequence(
            [processors.ByteLevel(trim_offsets=True), template]
        )
    else:
        backend.post_processor = template
    return Tokenizer(backend, SPECIAL_TOKENS, model_max_length)


# How byte-level BPE spells the ASCII whitespace bytes (space, \t, \n, \v, \f, \r) in its tokens.
_BYTE_LEVEL_SPACE = "\u0120\u0109\u010a\u010b\u010c\u010d"


def word_starts(encoding: Encoding, text: str | None = None) -> np.ndarray:
    """``[T]`` bool: True where a token starts a new word; special tokens are False.

    Decided from character offsets (not the ``##`` prefix), so it works for every tokenizer kind.
    A word is a run of non-whitespace tokens without gaps between their offsets; whitespace pieces
    (byte-level BPE's ``Ġ``/``Ċ``, which trimmed offsets make empty) join the word that follows.
    A non-special token starts a word when it is the first one, follows a special token, is
    whitespace after a non-whitespace token, or is non-whitespace after a non-whitespace token
    with a gap between them (start > previous end).
    ``text`` (the encoded string) makes the whitespace test exact; without it, a token is
    whitespace when its span is empty or it is spelled only with byte-level whitespace symbols.
    With ``text``, scripts written without spaces (``UNSPACED_RANGES``) have no gaps to go by: there a
    token starts a word when it shares no character with the token before (byte-level pieces of one
    character share its offsets), the character it starts at or the one before it is unspaced, and it is
    not a combining mark; so each CJK character, or each token where one spans several characters, is a word.
    """
    offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
    special = np.asarray(encoding.special_tokens_mask, dtype=bool)
    n = len(special)
    if n == 0:
        return np.zeros(0, dtype=bool)
    start, end = offsets[:, 0], offsets[:, 1]
    if text is not None:
        space = [s >= e or text[s:e].isspace() for s, e in encoding.offsets]
    else:
        space = [s >= e or not t.strip(_BYTE_LEVEL_SPACE) for t, (s, e) in zip(encoding.tokens, encoding.offsets)]
    space = np.asarray(space, dtype=bool) & ~special
    prev_special = np.ones(n, dtype=bool)  # "before the first token" counts as a boundary
    prev_special[1:] = special[:-1]
    prev_end = np.full(n, -1, dtype=np.int64)
    prev_end[1:] = end[:-1]
    prev_space = np.zeros(n, dtype=bool)
    prev_space[1:] = space[:-1]
    # Whitespace offsets are unreliable (trimming moves them), so a gap only counts between
    # non-whitespace tokens; a token after whitespace continues the word the whitespace opened.
    gap = (start > prev_end) & ~space & ~prev_space
    starts = ~special & (prev_special | gap | (space & ~prev_space))
    flags = unspaced_chars(text) if text is not None else np.zeros(0, dtype=bool)
    if flags.any():
        at = np.clip(start, 0, len(text) - 1)
        unspaced = flags[at] | ((start > 0) & flags[np.maximum(at - 1, 0)])  # [T]: this or the previous char
        # A combining mark (a Thai vowel sign, say) belongs to the character before it.
        mark = np.array([unicodedata.category(text[i]).startswith("M") for i in at], dtype=bool)
        starts |= ~special & ~space & unspaced & ~mark & (start >= prev_end)
    return starts


def heldout_coverage(tokenizer: Tokenizer, texts: Iterable[str], seen: set[str]) -> dict[str, float | int]:
    """How well a tokenizer covers held-out ``texts``, given ``seen``: the characters of its training text.

    Over the held-out non-whitespace characters: ``chars_seen`` (share that occur in the training text),
    ``chars_in_vocab`` (share the tokenizer spells without [UNK]; every one for byte-level BPE, while
    WordPiece needs the character itself as a piece) and ``unknown_char_rate`` (share inside [UNK]
    tokens: WordPiece turns a whole word into [UNK] for one unknown character); over the held-out tokens:
    ``unknown_token_rate``. Rates are 0.0 when there is nothing to count (``chars``/``tokens`` say so).
    """
    counts: dict[str, int] = {}
    tokens = unknown_tokens = unknown_chars = 0
    for text in texts:
        for char in text:
            if not char.isspace():
                counts[char] = counts.get(char, 0) + 1
        encoding = tokenizer.encode(text, add_special_tokens=False)
        tokens += len(encoding.ids)
        for token_id, (s, e) in zip(encoding.ids, encoding.offsets):
            if token_id == tokenizer.unk_id:
                unknown_tokens += 1
                unknown_chars += sum(not c.isspace() for c in text[s:e])
    chars = sum(counts.values())

    def spelled(char: str) -> bool:  # the character alone encodes to pieces, none of them [UNK]
        ids = tokenizer.encode(char, add_special_tokens=False).ids
        return bool(ids) and tokenizer.unk_id not in ids

    def share(part: int, whole: int) -> float:
        return part / whole if whole else 0.0

    return {
        "chars": chars, "distinct_chars": len(counts), "tokens": tokens,
        "chars_seen": share(sum(n for c, n in counts.items() if c in seen), chars),
        "chars_in_vocab": share(sum(n for c, n in counts.items() if spelled(c)), chars),
        "unknown_token_rate": share(unknown_tokens, tokens),
        "unknown_char_rate": share(unknown_chars, chars),
    }


UNKNOWN_ADVICE_RATE = 0.01  # above this share of [UNK] tokens, a line says how to read the text instead


def unknown_note(unknown: int, tokens: int, what: str) -> str | None:
    """The line a command prints when ``unknown`` of the ``tokens`` of ``what`` are [UNK] (text the
    tokenizer cannot spell: a character outside its vocabulary, all of whose word it then loses), past
    ``UNKNOWN_ADVICE_RATE``; None below."""
    rate = unknown / max(tokens, 1)
    if rate <= UNKNOWN_ADVICE_RATE:
        return None
    return (f"{what}: {rate:.1%} of its {tokens:,} tokens are [UNK] (characters the tokenizer lacks; the words "
            "holding them are lost to the model); a tokenizer trained on such text reads them (masklm tokenizer "
            "train --kind bpe, or masklm train --tokenizer-kind bpe: byte-level BPE spells every character), "
            "with a model trained on it")


def unknown_counts(tokenizer: Tokenizer, texts: Sequence[str]) -> list[int]:
    """How many [UNK] tokens each text becomes (words with a character the vocabulary lacks)."""
    return [enc.ids.count(tokenizer.unk_id) for enc in tokenizer.encode_batch(list(texts))]


def unscored_note(counts: Sequence[int], noun: str = "sentence") -> str | None:
    """The line saying how many of the texts hold [UNK] tokens, which no scoring metric scores (the model
    never learns to predict [UNK]), so their scores leave those words out; None when none does."""
    holding = sum(1 for c in counts if c)
    if not holding:
        return None
    return (f"{holding} of {len(counts)} {noun}s {'holds' if holding == 1 else 'hold'} [UNK] tokens ({sum(counts)} in "
            "all: text the tokenizer cannot spell), which are not scored: their scores leave those words out")


def heldout_stride(fraction: float) -> int:
    """Every ``heldout_stride(f)``-th document is held out (about a share ``f``); 0 = none."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"held-out fraction must be in [0, 1) (got {fraction})")
    return 0 if fraction == 0 else max(2, round(1.0 / fraction))


def split_stream(texts: Iterable[str], stride: int, heldout: list[str]) -> Iterator[str]:
    """Yield the training documents of ``texts``; document i goes to ``heldout`` instead when
    ``stride`` and ``i % stride == stride - 1`` (a rule that needs no count, so a corpus streams once)."""
    for i, text in enumerate(texts):
        if stride and i % stride == stride - 1:
            heldout.append(text)
        else:
            yield text
