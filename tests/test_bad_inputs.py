"""Every bad input is one line a user can act on (issue #12, point 3).

One row per case: the row copies a fixture folder (a model folder, an LTG model folder, a shard folder, a
tokenizer folder or a run folder, all built once per session), breaks one thing in it, runs the real CLI
(``masklm.cli.main``) and checks the outcome: exit status 2, exactly one line on stderr that starts with
``masklm: error:`` and names the file or the field, no traceback, nothing on stdout, and no output left
where the command would have written it. The cases are those of the fuzz pass
(``shared/research/reliability-review.md``: truncated, zeroed and flipped files; wrong types and ranges in
config.json, tokenizer_config.json, training_args.json, manifests and TOML; malformed JSONL and CSV;
unwritable output paths; non-finite and out-of-range hyperparameters in TOML and flags), plus the
content checksums of model and shard folders.

Tests run as root, so a read-only folder does not stop a write: the unwritable paths are below a regular
file, or in ``/proc``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_documents
from safetensors.torch import load_file, save_file

import masklm.cli
from masklm.config import ModelConfig
from masklm.data.shards import ShardedCorpus, prepare_shards
from masklm.errors import DataError
from masklm.files import sha256_file
from masklm.modeldir import save_model_dir
from masklm.models import build_model
from masklm.tokenizer import Tokenizer, train_tokenizer

# ---- fixtures, built once per session --------------------------------------------------------------


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> dict[str, Path]:
    """Folders every row copies: tok (tokenizer), bert and ltg (model folders), shards, run (a one-step run
    with a checkpoint), plus the corpus file they were made from."""
    root = tmp_path_factory.mktemp("bad_inputs")
    documents = make_documents(60)
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(documents) + "\n")
    tok = train_tokenizer(documents, kind="wordpiece", vocab_size=60, min_frequency=1)
    tok.save(root / "tok")
    sizes = dict(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    save_model_dir(root / "bert", build_model(ModelConfig(**sizes)), tok, {"objectives": ["mlm"]})
    save_model_dir(root / "ltg", build_model(ModelConfig(arch="ltg-bert", **sizes)), tok, {"objectives": ["mlm"]})
    prepare_shards([str(corpus)], tok, root / "shards", num_workers=1, log=lambda _m: None)
    (root / "run.toml").write_text("[model]\nhidden_size = 32\nnum_hidden_layers = 1\nnum_attention_heads = 2\n"
                                   "intermediate_size = 64\n")
    assert masklm.cli.main(RUN_ARGS(root / "run", root)) == 0
    return {"root": root, "corpus": corpus, "tok": root / "tok", "bert": root / "bert", "ltg": root / "ltg",
            "shards": root / "shards", "run": root / "run", "toml": root / "run.toml"}


def RUN_ARGS(out: Path, root: Path) -> list[str]:  # noqa: N802 - a constant-like argv builder
    return ["train", "--config", str(root / "run.toml"), "--corpus", str(root / "corpus.txt"), "--tokenizer",
            str(root / "tok"), "--out", str(out), "--max-steps", "1", "--save-every", "1", "--seq-len", "16",
            "--batch-size", "2", "--no-progress"]


# ---- how a row breaks its folder ----------------------------------------------------------------------


def edit_json(name: str, **changes) -> Callable[[Path], None]:
    """Set (or, with value ``DROP``, remove) top-level keys of the JSON file ``name``."""
    def mutate(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        for key, value in changes.items():
            if value is DROP:
                data.pop(key)
            else:
                data[key] = value
        (folder / name).write_text(json.dumps(data))
    return mutate


DROP = object()


def write(name: str, content: bytes | str) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return mutate


def truncate(name: str, keep: float | int = 0.5) -> Callable[[Path], None]:
    """Keep the first ``keep`` bytes (an int) or that share of the file (a float)."""
    def mutate(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[:keep if isinstance(keep, int) else int(len(data) * keep)])
    return mutate


def zero(name: str) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        (folder / name).write_bytes(bytes((folder / name).stat().st_size))
    return mutate


def flip(name: str, at: float = 0.9, count: int = 16) -> Callable[[Path], None]:
    """Invert ``count`` bytes from the share ``at`` of the file on (the same size, other content)."""
    def mutate(folder: Path) -> None:
        data = bytearray((folder / name).read_bytes())
        start = min(int(len(data) * at), len(data) - count)
        data[start:start + count] = bytes(b ^ 0xFF for b in data[start:start + count])
        (folder / name).write_bytes(bytes(data))
    return mutate


def random_bytes(name: str, seed: int = 0) -> Callable[[Path], None]:
    """Same size, random content."""
    def mutate(folder: Path) -> None:
        size = (folder / name).stat().st_size
        (folder / name).write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return mutate


def rename_token(folder: Path) -> None:
    """tokenizer.json stays a valid tokenizer with one token spelled differently."""
    data = json.loads((folder / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    word = next(w for w in vocab if w.isalpha())
    vocab[word + "qq"] = vocab.pop(word)
    (folder / "tokenizer.json").write_text(json.dumps(data))


def manifest_shard(**changes) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        data = json.loads((folder / "manifest.json").read_text())
        for key, value in changes.items():
            if value is DROP:
                data["shards"][0].pop(key)
            else:
                data["shards"][0][key] = value
        (folder / "manifest.json").write_text(json.dumps(data))
    return mutate


def without_checksums(then: Callable[[Path], None]) -> Callable[[Path], None]:
    """A shard folder as masklm 0.x wrote it (no sha256 in the manifest), then ``then``."""
    def mutate(folder: Path) -> None:
        data = json.loads((folder / "manifest.json").read_text())
        data.pop("checksums")
        (folder / "manifest.json").write_text(json.dumps(data))
        then(folder)
    return mutate


def save_npy(name: str, array: np.ndarray) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        np.save(folder / name, array)
    return mutate


def non_monotone_offsets(folder: Path) -> None:
    offsets = np.load(folder / "doc_offsets.npy")
    offsets[1], offsets[2] = offsets[2], offsets[1] - 1
    np.save(folder / "doc_offsets.npy", offsets)


def large_token_ids(folder: Path) -> None:
    """Token ids past the vocabulary, written over the first document (same size)."""
    tokens = np.fromfile(folder / "tokens-00000.bin", dtype=np.uint16)
    tokens[:5] = 60000
    tokens.tofile(folder / "tokens-00000.bin")


def mismatched_checkpoint(folder: Path) -> None:
    """The newest checkpoint holds the weights of a model with other sizes, with a manifest that verifies."""
    step = folder / "checkpoints" / "step-1"
    state = load_file(str(step / "model.safetensors"))
    state = {k: torch.zeros(*[2 * d for d in v.shape]) if v.dim() else v for k, v in state.items()}
    save_file(state, str(step / "model.safetensors"))
    manifest = json.loads((step / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = {"bytes": (step / "model.safetensors").stat().st_size,
                                              "sha256": sha256_file(step / "model.safetensors")}
    (step / "manifest.json").write_text(json.dumps(manifest))


def pad_is_vocab_size(folder: Path) -> None:
    data = json.loads((folder / "config.json").read_text())
    edit_json("config.json", pad_token_id=data["vocab_size"])(folder)


def nothing(_folder: Path) -> None:
    pass


# ---- the table -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """``base`` is copied to ``{m}`` and broken by ``mutate``; ``argv`` runs with ``{m}``, ``{tok}``, ``{corpus}``,
    ``{tmp}``, ``{afile}`` (a regular file) and ``{toml}`` (the row's ``toml`` text, when it has one)
    filled in. The error line must contain every string of ``names``; ``absent`` paths must not exist after."""

    id: str
    base: str | None
    mutate: Callable[[Path], None]
    argv: tuple[str, ...]
    names: tuple[str, ...]
    absent: tuple[str, ...] = ()
    toml: str | None = None
    files: dict[str, str | bytes] = field(default_factory=dict)
    logs: bool = False


FILL = ("fill-mask", "--model", "{m}", "the [MASK] river .")
PREPARE = ("data", "prepare", "--corpus", "{corpus}", "--tokenizer", "{tok}", "--out", "{m}")
TRAIN = ("train", "--corpus", "{corpus}", "--tokenizer", "{tok}", "--out", "{tmp}/out", "--max-steps", "1",
         "--seq-len", "16", "--batch-size", "2", "--no-progress")
# No --corpus or --batch-size: the TOML's own values are the ones checked (flags would override them).
TOML_TRAIN = ("train", "--config", "{toml}", "--tokenizer", "{tok}", "--out", "{tmp}/out", "--max-steps", "1",
              "--seq-len", "16", "--no-progress")


def model_rows() -> list[Row]:
    bert, ltg = "bert", "ltg"
    return [
        Row("config-pad-eq-vocab", bert, pad_is_vocab_size, FILL,
            ("config.json", "pad_token_id")),
        Row("config-pad-huge", bert, edit_json("config.json", pad_token_id=10**6), FILL, ("pad_token_id",)),
        Row("config-pad-negative", bert, edit_json("config.json", pad_token_id=-1), FILL, ("pad_token_id",)),
        Row("config-pad-very-negative", bert, edit_json("config.json", pad_token_id=-10**6), FILL, ("pad_token_id",)),
        Row("config-type-vocab-negative", bert, edit_json("config.json", type_vocab_size=-2), FILL,
            ("type_vocab_size",)),
        Row("config-type-vocab-zero", bert, edit_json("config.json", type_vocab_size=0), FILL, ("type_vocab_size",)),
        Row("config-eps-negative", bert, edit_json("config.json", layer_norm_eps=-1e-12), FILL, ("layer_norm_eps",)),
        Row("config-eps-zero", bert, edit_json("config.json", layer_norm_eps=0), FILL, ("layer_norm_eps",)),
        Row("config-eps-nan", bert, edit_json("config.json", layer_norm_eps=float("nan")), FILL, ("layer_norm_eps",)),
        Row("config-dropout-infinite", bert, edit_json("config.json", attention_probs_dropout_prob=float("inf")), FILL,
            ("attention_probs_dropout_prob",)),
        Row("config-hidden-zero", bert, edit_json("config.json", hidden_size=0), FILL, ("hidden_size",)),
        Row("config-hidden-negative", bert, edit_json("config.json", hidden_size=-32), FILL, ("hidden_size",)),
        Row("config-heads-do-not-divide", bert, edit_json("config.json", num_attention_heads=3), FILL,
            ("num_attention_heads",)),
        Row("config-heads-zero", bert, edit_json("config.json", num_attention_heads=0), FILL,
            ("num_attention_heads",)),
        Row("config-vocab-huge", bert, edit_json("config.json", vocab_size=10**12), FILL,
            ("config.json", "vocab_size")),
        Row("config-layers-huge", bert, edit_json("config.json", num_hidden_layers=10**6), FILL,
            ("config.json", "num_hidden_layers")),
        Row("config-dropout-above-one", bert, edit_json("config.json", hidden_dropout_prob=1.5), FILL,
            ("hidden_dropout_prob",)),
        Row("config-dropout-string", bert, edit_json("config.json", hidden_dropout_prob="x"), FILL,
            ("hidden_dropout_prob",)),
        Row("config-hidden-float", bert, edit_json("config.json", hidden_size=32.5), FILL, ("hidden_size",)),
        Row("config-positions-zero", bert, edit_json("config.json", max_position_embeddings=0), FILL,
            ("max_position_embeddings",)),
        Row("config-act-unknown", bert, edit_json("config.json", hidden_act="swish9"), FILL, ("hidden_act",)),
        Row("config-arch-number", bert, edit_json("config.json", arch=5), FILL, ("arch",)),
        Row("config-init-range-negative", bert, edit_json("config.json", initializer_range=-0.02), FILL,
            ("initializer_range",)),
        Row("config-truncated", bert, truncate("config.json"), FILL, ("config.json",)),
        Row("config-empty", bert, write("config.json", b""), FILL, ("config.json",)),
        Row("config-zeroed", bert, zero("config.json"), FILL, ("config.json",)),
        Row("config-array", bert, write("config.json", "[1, 2, 3]"), FILL, ("config.json",)),
        Row("config-not-utf8", bert, write("config.json", b'{"hidden_size": "\xff"}'), FILL, ("config.json",)),
        Row("weights-truncated", bert, truncate("model.safetensors"), FILL, ("model.safetensors",)),
        Row("weights-zeroed", bert, zero("model.safetensors"), FILL, ("model.safetensors",)),
        Row("weights-empty", bert, write("model.safetensors", b""), FILL, ("model.safetensors",)),
        Row("weights-flipped", bert, flip("model.safetensors"), FILL, ("model.safetensors", "checksum")),
        Row("weights-random", bert, random_bytes("model.safetensors"), FILL, ("model.safetensors",)),
        Row("tokenizer-truncated", bert, truncate("tokenizer.json"), FILL, ("tokenizer.json",)),
        Row("tokenizer-zeroed", bert, zero("tokenizer.json"), FILL, ("tokenizer.json",)),
        Row("tokenizer-empty", bert, write("tokenizer.json", b""), FILL, ("tokenizer.json",)),
        Row("tokenizer-token-changed", bert, rename_token, FILL, ("tokenizer.json", "checksum")),
        Row("tokenizer-config-array", bert, write("tokenizer_config.json", "[1, 2, 3]"), FILL,
            ("tokenizer_config.json",)),
        Row("tokenizer-config-string", bert, write("tokenizer_config.json", '"hello"'), FILL,
            ("tokenizer_config.json",)),
        Row("tokenizer-config-truncated", bert, truncate("tokenizer_config.json"), FILL,
            ("tokenizer_config.json",)),
        Row("tokenizer-config-mask-number", bert, edit_json("tokenizer_config.json", mask_token=5), FILL,
            ("tokenizer_config.json", "mask_token")),
        Row("tokenizer-config-max-length-negative", bert, edit_json("tokenizer_config.json", model_max_length=-5),
            FILL, ("tokenizer_config.json", "model_max_length")),
        Row("training-args-objectives-number", bert, edit_json("training_args.json", objectives=5), FILL,
            ("training_args.json", "objectives")),
        Row("training-args-objectives-numbers", bert, edit_json("training_args.json", objectives=[1, 2]), FILL,
            ("training_args.json", "objectives")),
        Row("training-args-array", bert, write("training_args.json", "[]"), FILL, ("training_args.json",)),
        Row("training-args-truncated", bert, truncate("training_args.json"), FILL, ("training_args.json",)),
        Row("checksums-garbage", bert, write("checksums.json", "{not json"), FILL, ("checksums.json",)),
        Row("checksums-wrong-shape", bert, write("checksums.json", '{"files": 5}'), FILL, ("checksums.json",)),
        Row("ltg-bucket-zero", ltg, edit_json("config.json", position_bucket_size=0), FILL,
            ("position_bucket_size",)),
        Row("ltg-bucket-negative", ltg, edit_json("config.json", position_bucket_size=-1), FILL,
            ("position_bucket_size",)),
        Row("ltg-bucket-one", ltg, edit_json("config.json", position_bucket_size=1), FILL, ("position_bucket_size",)),
        Row("ltg-pad-eq-vocab", ltg, pad_is_vocab_size, FILL, ("pad_token_id",)),
        Row("ltg-gate-string", ltg, edit_json("config.json", attention_gate="yes"), FILL, ("attention_gate",)),
        Row("ltg-weights-flipped", ltg, flip("model.safetensors"), FILL, ("model.safetensors", "checksum")),
        Row("export-weights-flipped", bert, flip("model.safetensors"),
            ("export-hf", "--model", "{m}", "--out", "{tmp}/exported"), ("model.safetensors",), ("{tmp}/exported",)),
        Row("embed-config-bad", bert, edit_json("config.json", pad_token_id=9999),
            ("embed", "--model", "{m}", "--out", "{tmp}/v.npy", "a text"), ("pad_token_id",), ("{tmp}/v.npy",)),
    ]


def shard_rows() -> list[Row]:
    """``data prepare`` over a shard folder of the same corpus and tokenizer: without ``--overwrite`` a damaged
    folder is an error naming the file (with it, the folder is rebuilt)."""
    s = "shards"
    tokens, starts, offsets = "tokens-00000.bin", "word_starts-00000.bin", "doc_offsets.npy"
    return [
        Row("offsets-random", s, random_bytes(offsets), PREPARE, (offsets, "--overwrite")),
        Row("offsets-truncated", s, truncate(offsets, 200), PREPARE, (offsets,)),
        Row("offsets-empty", s, write(offsets, b""), PREPARE, (offsets,)),
        Row("offsets-missing", s, lambda d: (d / offsets).unlink(), PREPARE, (offsets,)),
        Row("offsets-non-monotone", s, non_monotone_offsets, PREPARE, (offsets, "checksum")),
        Row("offsets-float", s, save_npy(offsets, np.linspace(0, 1, 61)), PREPARE, (offsets,)),
        Row("old-offsets-non-monotone", s, without_checksums(non_monotone_offsets), PREPARE, (offsets,)),
        Row("old-offsets-random", s, without_checksums(random_bytes(offsets)), PREPARE, (offsets,)),
        Row("old-offsets-2d", s, without_checksums(save_npy(offsets, np.zeros((2, 2), np.int64))), PREPARE,
            (offsets,)),
        Row("tokens-random", s, random_bytes(tokens), PREPARE, (tokens, "checksum")),
        Row("tokens-flipped", s, flip(tokens, at=0.5, count=2), PREPARE, (tokens, "checksum")),
        Row("tokens-truncated", s, truncate(tokens), PREPARE, (tokens,)),
        Row("tokens-empty", s, write(tokens, b""), PREPARE, (tokens,)),
        Row("old-tokens-out-of-vocab", s, without_checksums(large_token_ids), PREPARE, (tokens, "60000")),
        Row("word-starts-truncated", s, truncate(starts), PREPARE, (starts,)),
        Row("word-starts-flipped", s, flip(starts), PREPARE, (starts, "checksum")),
        Row("word-starts-missing", s, lambda d: (d / starts).unlink(), PREPARE, (starts,)),
        Row("manifest-num-tokens-string", s, edit_json("manifest.json", num_tokens="lots"), PREPARE,
            ("manifest.json", "num_tokens")),
        Row("manifest-num-documents-string", s, edit_json("manifest.json", num_documents="many"), PREPARE,
            ("manifest.json", "num_documents")),
        Row("manifest-shards-string", s, edit_json("manifest.json", shards="x"), PREPARE, ("manifest.json", "shards")),
        Row("manifest-dtype-unknown", s, edit_json("manifest.json", dtype="complex-banana"), PREPARE,
            ("manifest.json", "dtype")),
        Row("manifest-dtype-float", s, edit_json("manifest.json", dtype="float64"), PREPARE, ("manifest.json", "dtype")),
        Row("manifest-no-shards", s, edit_json("manifest.json", shards=DROP), PREPARE, ("manifest.json", "shards")),
        Row("manifest-no-dtype", s, edit_json("manifest.json", dtype=DROP), PREPARE, ("manifest.json", "dtype")),
        Row("manifest-no-num-tokens", s, edit_json("manifest.json", num_tokens=DROP), PREPARE,
            ("manifest.json", "num_tokens")),
        Row("manifest-no-fingerprint", s, edit_json("manifest.json", tokenizer_fingerprint=DROP), PREPARE,
            ("manifest.json", "tokenizer_fingerprint")),
        Row("manifest-vocab-string", s, edit_json("manifest.json", vocab_size="x"), PREPARE,
            ("manifest.json", "vocab_size")),
        Row("manifest-num-tokens-wrong", s, edit_json("manifest.json", num_tokens=5), PREPARE, ("manifest.json",)),
        Row("manifest-checksums-string", s, edit_json("manifest.json", checksums="x"), PREPARE,
            ("manifest.json", "checksums")),
        Row("manifest-shard-no-tokens", s, manifest_shard(tokens=DROP), PREPARE, ("manifest.json", "tokens")),
        Row("manifest-shard-negative", s, manifest_shard(num_tokens=-5), PREPARE, ("manifest.json", "num_tokens")),
        Row("manifest-shard-outside", s, manifest_shard(tokens="../corpus.txt"), PREPARE, ("manifest.json", "tokens")),
        Row("manifest-truncated", s, truncate("manifest.json"), PREPARE, ("manifest.json",)),
        Row("manifest-array", s, write("manifest.json", "[]"), PREPARE, ("manifest.json",)),
    ]


def tokenizer_rows() -> list[Row]:
    """A tokenizer folder given to ``data prepare --tokenizer``."""
    argv = ("data", "prepare", "--corpus", "{corpus}", "--tokenizer", "{m}", "--out", "{tmp}/shards")
    out = ("{tmp}/shards",)
    return [
        Row("tok-json-truncated", "tok", truncate("tokenizer.json"), argv, ("tokenizer.json",), out),
        Row("tok-json-array", "tok", write("tokenizer.json", "[]"), argv, ("tokenizer.json",), out),
        Row("tok-json-missing", "tok", lambda d: (d / "tokenizer.json").unlink(), argv, ("tokenizer.json",), out),
        Row("tok-config-array", "tok", write("tokenizer_config.json", "[1]"), argv, ("tokenizer_config.json",), out),
        Row("tok-config-unknown-mask", "tok", edit_json("tokenizer_config.json", mask_token="<nope>"), argv,
            ("tokenizer_config.json", "mask_token"), out),
        Row("tok-config-pad-list", "tok", edit_json("tokenizer_config.json", pad_token=["[PAD]"]), argv,
            ("tokenizer_config.json", "pad_token"), out),
    ]


def toml_rows() -> list[Row]:
    """``train --config X.toml``: checked before any data, tokenizer or folder is touched."""
    out = ("{tmp}/out",)

    def row(name: str, text: str, *names: str) -> Row:
        return Row(f"toml-{name}", None, nothing, TOML_TRAIN, names, out, toml=text)

    return [
        row("lr-inf", "lr = inf\n", "lr"),
        row("lr-nan", "lr = nan\n", "lr"),
        row("lr-negative", "lr = -1.0\n", "lr"),
        row("lr-string", 'lr = "fast"\n', "lr"),
        row("eps-zero", "eps = 0.0\n", "eps"),
        row("eps-inf", "eps = inf\n", "eps"),
        row("betas-strings", 'betas = ["a", "b"]\n', "betas"),
        row("betas-one", "betas = [0.9]\n", "betas"),
        row("betas-above-one", "betas = [1.5, 0.9]\n", "betas"),
        row("mask-split-strings", 'mask_split = ["a", "b", "c"]\n', "mask_split"),
        row("seed-negative", "seed = -1\n", "seed"),
        row("seed-huge", "seed = 99999999999999999999\n", "seed"),
        row("weight-decay-negative", "weight_decay = -5.0\n", "weight_decay"),
        row("weight-decay-nan", "weight_decay = nan\n", "weight_decay"),
        row("warmup-negative", "warmup_steps = -5\n", "warmup_steps"),
        row("clip-negative", "clip_norm = -1.0\n", "clip_norm"),
        row("save-every-negative", "save_every = -1\n", "save_every"),
        row("eval-every-negative", "eval_every = -1\n", "eval_every"),
        row("eval-batches-zero", "eval_batches = 0\n", "eval_batches"),
        row("batch-size-string", 'batch_size = "32"\n', "batch_size"),
        row("batch-size-negative", "batch_size = -4\n", "batch_size"),
        row("mask-rate-above-one", "mask_rate = 1.5\n", "mask_rate"),
        row("mask-rate-nan", "mask_rate = nan\n", "mask_rate"),
        row("min-lr-ratio", "min_lr_ratio = 2.0\n", "min_lr_ratio"),
        row("heldout-nan", "heldout_fraction = nan\n", "heldout_fraction"),
        row("epochs-inf", "epochs = inf\n", "epochs"),
        row("time-limit-nan", "time_limit = nan\n", "time_limit"),
        row("diffusion-eps-zero", "diffusion_eps = 0.0\n", "diffusion_eps"),
        row("cooldown-negative", "lr_cooldown = -1\n", "lr_cooldown"),
        row("objective-number", "objective = 5\n", "objective"),
        row("corpus-numbers", "corpus = [1, 2]\n", "corpus"),
        row("model-not-table", "model = 5\n", "model"),
        row("model-hidden-zero", "[model]\nhidden_size = 0\n", "hidden_size"),
        row("model-heads-do-not-divide", "[model]\nnum_attention_heads = 3\n", "num_attention_heads"),
        row("model-unknown-key", "[model]\nhidden_sise = 64\n", "hidden_sise"),
        row("model-vocab-huge", "[model]\nvocab_size = 1000000000000\n", "vocab_size"),
        row("model-pad-huge", "[model]\npad_token_id = 99999\n", "pad_token_id"),
        row("syntax", "lr = = 1\n", "config.toml"),
        row("not-utf8", "lr = 1e-3 # \udcff\n", "config.toml"),
    ]


def flag_rows() -> list[Row]:
    out = ("{tmp}/out",)

    def row(name: str, *flags_and_names: str) -> Row:
        flags, names = flags_and_names[:2], flags_and_names[2:]
        return Row(f"flag-{name}", None, nothing, TRAIN + flags, names, out)

    return [
        row("lr-inf", "--lr", "inf", "lr"),
        row("lr-nan", "--lr", "nan", "lr"),
        row("batch-negative", "--batch-size", "-4", "batch_size"),
        row("mask-rate-above-one", "--mask-rate", "1.5", "mask_rate"),
        row("mask-rate-schedule-above-one", "--mask-rate", "0.3->2", "mask_rate"),
        row("seed-negative", "--seed", "-1", "seed"),
        row("warmup-negative", "--warmup", "-5", "warmup_steps"),
        row("heldout-nan", "--heldout-fraction", "nan", "heldout_fraction"),
        row("epochs-nan", "--epochs", "nan", "epochs"),
        row("time-limit-inf", "--time-limit", "inf", "time_limit"),
    ]


def path_rows() -> list[Row]:
    """Output paths that cannot be written: below a regular file, or in /proc (tests run as root, so
    permissions would not stop a write)."""
    proc = "/proc/masklm-bad-inputs"
    return [
        Row("out-train-below-file", None, nothing, TRAIN[:5] + ("--out", "{afile}/run") + TRAIN[7:], ("{afile}",)),
        Row("out-train-proc", None, nothing, TRAIN[:5] + ("--out", proc) + TRAIN[7:], (proc,)),
        Row("out-train-is-file", None, nothing, TRAIN[:5] + ("--out", "{afile}") + TRAIN[7:], ("{afile}",)),
        Row("out-tokenizer-below-file", None, nothing,
            ("tokenizer", "train", "--corpus", "{corpus}", "--out", "{afile}/tok", "--vocab-size", "60"), ("{afile}",)),
        Row("out-tokenizer-proc", None, nothing,
            ("tokenizer", "train", "--corpus", "{corpus}", "--out", proc, "--vocab-size", "60"), (proc,)),
        Row("out-prepare-below-file", None, nothing, PREPARE[:-1] + ("{afile}/shards",), ("{afile}",)),
        Row("out-prepare-proc", None, nothing, PREPARE[:-1] + (proc,), (proc,)),
        Row("out-export-below-file", "bert", nothing, ("export-hf", "--model", "{m}", "--out", "{afile}/hf"),
            ("{afile}",)),
        Row("out-export-proc", "bert", nothing, ("export-hf", "--model", "{m}", "--out", proc), (proc,)),
        Row("out-import-below-file", "bert", nothing, ("import-hf", "--from", "{m}", "--out", "{afile}/x"),
            ("{afile}",)),
        Row("out-embed-below-file", "bert", nothing, ("embed", "--model", "{m}", "--out", "{afile}/v.npy", "a b"),
            ("{afile}",)),
        Row("out-embed-proc", "bert", nothing, ("embed", "--model", "{m}", "--out", proc + ".npy", "a b"), (proc,)),
        Row("out-plot-below-file", "bert", nothing, ("eval", "minimal-pairs", "--model", "{m}", "--plot",
                                                       "{afile}/x.png"), ("{afile}",)),
        Row("out-finetune-below-file", "bert", nothing,
            ("finetune", "--model", "{m}", "--task", "classification", "--train", "{tmp}/t.jsonl", "--validation",
             "{tmp}/t.jsonl", "--out", "{afile}/ft"), ("{afile}",),
            files={"t.jsonl": '{"text": "the river", "label": "a"}\n{"text": "a world", "label": "b"}\n'}),
    ]


FINETUNE = ("finetune", "--model", "{m}", "--task", "classification", "--train", "{tmp}/train.{ext}",
            "--validation", "{tmp}/train.{ext}", "--out", "{tmp}/ft", "--epochs", "1")


def finetune_rows() -> list[Row]:
    good = '{"text": "the river", "label": "a"}\n'

    def row(name: str, ext: str, content: str | bytes, *names: str, task: str = "classification") -> Row:
        argv = tuple(a.replace("{ext}", ext) for a in FINETUNE)
        argv = argv[:4] + (task,) + argv[5:]
        return Row(f"finetune-{name}", "bert", nothing, argv, names, ("{tmp}/ft",), files={f"train.{ext}": content})

    return [
        row("jsonl-malformed", "jsonl", good + '{"text": "a world", "label": \n', "train.jsonl:2"),
        row("jsonl-array", "jsonl", good + "[1, 2]\n", "train.jsonl:2"),
        row("jsonl-text-number", "jsonl", good + '{"text": 5, "label": "b"}\n', "train.jsonl:2", "text"),
        row("jsonl-no-label", "jsonl", good + '{"text": "a world"}\n', "train.jsonl:2", "label"),
        row("jsonl-not-utf8", "jsonl", good.encode() + b'{"text": "caf\xe9", "label": "b"}\n', "train.jsonl"),
        row("csv-extra-field", "csv", "text,label\nthe river,a\na world,b,c\n", "train.csv:3"),
        row("csv-unclosed-quote", "csv", 'text,label\nthe river,a\n"a world,b\n', "train.csv:"),
        row("csv-empty", "csv", "", "train.csv"),
        row("csv-regression-label", "csv", "text,label\nthe river,1.5\na world,abc\n", "train.csv:3", "label",
            task="regression"),
        row("csv-regression-inf", "csv", "text,label\nthe river,1.5\na world,inf\n", "train.csv:3", "label",
            task="regression"),
        row("tagging-not-bio", "conll", "the\tO\nriver\tE-LOC\n", "train.conll:2", task="tagging"),
        Row("finetune-lr-inf", "bert", nothing, tuple(a.replace("{ext}", "jsonl") for a in FINETUNE) + ("--lr", "inf"),
            ("--lr",), ("{tmp}/ft",), files={"train.jsonl": good * 2}),
        Row("finetune-weight-decay-nan", "bert", nothing,
            tuple(a.replace("{ext}", "jsonl") for a in FINETUNE) + ("--weight-decay", "nan"), ("--weight-decay",),
            ("{tmp}/ft",), files={"train.jsonl": good * 2}),
    ]


def pairs_rows() -> list[Row]:
    argv = ("eval", "minimal-pairs", "--model", "{m}", "--data", "{tmp}/p.jsonl")
    pair = '"sentence_good": "the river", "sentence_bad": "river the"'
    return [
        Row("pairs-uid-object", "bert", nothing, argv, ("p.jsonl:1", "UID"), files={"p.jsonl": f'{{{pair}, "UID": {{"x": 1}}}}\n'}),
        Row("pairs-field-list", "bert", nothing, argv, ("p.jsonl:1", "field"), files={"p.jsonl": f'{{{pair}, "field": [1]}}\n'}),
        Row("pairs-term-number", "bert", nothing, argv, ("p.jsonl:1", "linguistics_term"),
            files={"p.jsonl": f'{{{pair}, "linguistics_term": 5}}\n'}),
    ]


def run_rows() -> list[Row]:
    resume = ("train", "--config", "{root}/run.toml", "--corpus", "{corpus}", "--tokenizer", "{tok}", "--out", "{m}",
              "--max-steps", "2", "--save-every", "1", "--seq-len", "16", "--batch-size", "2", "--no-progress",
              "--resume")
    return [
        Row("run-checkpoint-other-sizes", "run", mismatched_checkpoint, resume, ("step-1", "model.safetensors"),
            logs=True),
    ]


ROWS = (model_rows() + shard_rows() + tokenizer_rows() + toml_rows() + flag_rows() + path_rows() + finetune_rows()
        + pairs_rows() + run_rows())


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_table_is_big_enough():
    assert len(ROWS) >= 60 and len({r.id for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_is_one_line(row: Row, base, tmp_path, capsys):
    m = tmp_path / "m"
    if row.base is not None:
        shutil.copytree(base[row.base], m)  # copy2: modification times are kept, as a plain copy would not
    afile = tmp_path / "afile"
    afile.write_text("a regular file, not a folder\n")
    for name, content in row.files.items():
        (tmp_path / name).write_bytes(content.encode() if isinstance(content, str) else content)
    toml = tmp_path / "config.toml"
    if row.toml is not None:
        toml.write_text(row.toml, encoding="utf-8", errors="surrogateescape")
    row.mutate(m)
    before = _snapshot(m) if m.is_dir() else None
    subs = {"m": m, "tok": base["tok"], "corpus": base["corpus"], "tmp": tmp_path, "afile": afile, "toml": toml,
            "root": base["root"]}
    argv = [a.format(**subs) for a in row.argv]
    capsys.readouterr()
    code = masklm.cli.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert code == 2, err
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("masklm: error: ")]
    if row.logs:  # progress lines before the problem is found are fine; the error is one line, the last
        assert len(errors) == 1 and lines[-1] == errors[0], err
    else:
        assert len(lines) == 1 and errors == lines, err
    for name in row.names:
        assert name.format(**subs) in errors[0], (name, errors[0])
    assert out == ""
    for path in row.absent:
        assert not Path(path.format(**subs)).exists(), path
    if before is not None:
        assert _snapshot(m) == before  # the input was left as it was: nothing half-written into it


# ---- checksums: written, checked, and not in the way ------------------------------------------------


def test_checksums_record_the_files(base):
    recorded = json.loads((base["bert"] / "checksums.json").read_text())["files"]
    assert sorted(recorded) == ["model.safetensors", "tokenizer.json"]
    for name, record in recorded.items():
        path = base["bert"] / name
        assert (record["sha256"], record["bytes"]) == (sha256_file(path), path.stat().st_size)
    manifest = json.loads((base["shards"] / "manifest.json").read_text())
    assert sorted(manifest["checksums"]) == ["doc_offsets.npy", "tokens-00000.bin", "word_starts-00000.bin"]
    for name, record in manifest["checksums"].items():
        assert record["sha256"] == sha256_file(base["shards"] / name)


def test_folders_without_checksums_still_load(base, tmp_path, capsys):
    """Folders written before checksums existed (or by other tools) load as they did."""
    shutil.copytree(base["bert"], tmp_path / "m")
    (tmp_path / "m" / "checksums.json").unlink()
    assert masklm.cli.main(["fill-mask", "--model", str(tmp_path / "m"), "the [MASK] river ."]) == 0
    shutil.copytree(base["shards"], tmp_path / "s")
    without_checksums(nothing)(tmp_path / "s")
    assert ShardedCorpus(tmp_path / "s").num_documents == 60
    argv = [a.format(m=tmp_path / "s", corpus=base["corpus"], tok=base["tok"]) for a in PREPARE]
    assert masklm.cli.main(argv) == 0
    assert "up to date" in capsys.readouterr().err


def test_big_shard_files_are_hashed_only_when_changed(base, tmp_path, monkeypatch):
    """Token files whose size and modification time are as recorded are not read; a copy with new times is
    hashed (and passes), and a same-size change is then found."""
    import masklm.files

    calls = []
    real = masklm.files.sha256_file
    monkeypatch.setattr(masklm.files, "sha256_file", lambda p: calls.append(Path(p).name) or real(p))
    shutil.copytree(base["shards"], tmp_path / "kept")  # copy2 keeps the times
    ShardedCorpus(tmp_path / "kept")
    assert calls == ["doc_offsets.npy"]  # 8 bytes per document: always hashed
    calls.clear()
    shutil.copytree(base["shards"], tmp_path / "new", copy_function=shutil.copy)  # new modification times
    ShardedCorpus(tmp_path / "new")
    assert sorted(calls) == ["doc_offsets.npy", "tokens-00000.bin", "word_starts-00000.bin"]
    flip("tokens-00000.bin", at=0.5, count=1)(tmp_path / "new")
    with pytest.raises(DataError, match="tokens-00000.bin does not match its checksum"):
        ShardedCorpus(tmp_path / "new")


def test_a_model_folder_is_hashed_once_per_process(base, tmp_path, monkeypatch):
    import masklm.files
    from masklm.modeldir import load_model_dir

    calls = []
    real = masklm.files.sha256_file
    monkeypatch.setattr(masklm.files, "sha256_file", lambda p: calls.append(Path(p).name) or real(p))
    shutil.copytree(base["bert"], tmp_path / "m")
    load_model_dir(tmp_path / "m")
    load_model_dir(tmp_path / "m")
    assert sorted(calls) == ["model.safetensors", "tokenizer.json"]


def test_training_rebuilds_damaged_shards(base, tmp_path):
    """The trainer prepares its data/ with overwrite: a damaged folder is rebuilt, and says why."""
    shutil.copytree(base["shards"], tmp_path / "s")
    random_bytes("tokens-00000.bin")(tmp_path / "s")
    messages: list[str] = []
    prepare_shards([str(base["corpus"])], Tokenizer.load(base["tok"]), tmp_path / "s", num_workers=1,
                   log=messages.append)
    assert any(m.startswith("rebuilding") and "tokens-00000.bin does not match its checksum" in m for m in messages)
    assert ShardedCorpus(tmp_path / "s").num_tokens == ShardedCorpus(base["shards"]).num_tokens


def test_ctrl_c_while_the_commands_import_is_one_line_and_status_130(monkeypatch, capsys):
    """Ctrl-C in the first second of any command lands while torch and the command modules import."""
    import masklm.cli as cli

    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.importlib, "import_module", interrupted)
    assert cli.main(["corpus", "list"]) == 130
    assert capsys.readouterr().err == "masklm: interrupted\n"
