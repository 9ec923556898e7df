"""Tokenizers: train (WordPiece or byte-level BPE), save, load, and word boundaries.

A thin wrapper over Hugging Face ``tokenizers``. Trained tokenizers put the special tokens
``[PAD] [UNK] [CLS] [SEP] [MASK]`` at ids 0..4 and wrap every text as ``[CLS] text [SEP]``.
A saved folder (``tokenizer.json`` + ``tokenizer_config.json``) also loads in
``transformers.AutoTokenizer.from_pretrained``.

Choices:
- WordPiece uses ``BertNormalizer(lowercase=False, strip_accents=False)``: the model is cased and
  keeps accents, so nothing the user wrote is lost before the model sees it.
- Byte-level BPE starts from all 256 bytes and has no normalizer, so any Unicode text round-trips.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Encoding, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as _Backend

from masklm.errors import ConfigError, ModelDirError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_SPECIAL_KEYS = ["pad_token", "unk_token", "cls_token", "sep_token", "mask_token"]
KINDS = ("wordpiece", "bpe")
# Hugging Face configs sometimes carry a sentinel (1e30) meaning "no limit"; BERT positions stop at 512.
_DEFAULT_MAX_LENGTH = 512


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

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, add_special_tokens: bool = True) -> Encoding:
        return self.backend.encode(text, add_special_tokens=add_special_tokens)

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[Encoding]:
        return self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def decode_batch(self, rows: Sequence[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
        return self.backend.decode_batch([[int(i) for i in ids] for ids in rows],
                                         skip_special_tokens=skip_special_tokens)

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
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelDirError(f"{path} is not valid JSON ({exc}); fix or delete it") from None
    if not isinstance(config, dict):
        raise ModelDirError(f"{path} must hold a JSON object, not {type(config).__name__}; fix or delete it")
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
    if kind not in KINDS:
        raise ConfigError(f"unknown tokenizer kind {kind!r}; use one of {', '.join(KINDS)}")
    floor = len(SPECIAL_TOKENS) + (256 if kind == "bpe" else 1)
    if vocab_size < floor:
        raise ConfigError(f"vocab_size {vocab_size} is too small for {kind}; use at least {floor}")
    if min_frequency < 1:
        raise ConfigError(f"min_frequency must be >= 1 (got {min_frequency})")
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
    return ~special & (prev_special | gap | (space & ~prev_space))
