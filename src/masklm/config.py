"""Configuration: the model config, size presets, and the typed loaders every config uses.

Field names follow Hugging Face's where a field means the same thing, so a BERT ``config.json`` written
here is also a valid ``transformers.BertConfig``. The training config (``training.config.TrainConfig``)
lives beside the trainer, because checking it needs the optimizers, schedules and objectives; it reads
its TOML and dicts through ``read_toml`` and ``dataclass_from_dict`` here, so this module imports
nothing above it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from masklm.errors import ConfigError, MaskLMError
from masklm.version import __version__

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ARCHS = ("bert", "ltg-bert", "gpt-bert")
# LTG-BERT buckets relative positions up to 512 (models.ltg_bert.MAX_RELATIVE_POSITION) on a log scale
# past bucket_size / 2, which must stay below 511 (and above 0) for the scale to exist.
MAX_POSITION_BUCKET_SIZE = 1020

# Fields that only one family of architectures has, with that family's defaults. Setting a field of the
# other family is an error (a config that mixes families is almost always a mistake).
BERT_FIELDS: dict[str, Any] = {"type_vocab_size": 2, "initializer_range": 0.02, "hidden_act": "gelu",
                               "layer_norm_eps": 1e-12}
LTG_FIELDS: dict[str, Any] = {"position_bucket_size": 32, "position_split": "contiguous",
                              "attention_gate": False, "dwa": False, "layer_norm_eps": 1e-7}

# Sizes by name. tiny trains in minutes on a 2-core laptop; base is BERT-base.
SIZES: dict[str, dict[str, dict[str, int]]] = {
    "bert": {
        "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
        "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
        "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    },
    # LTG-BERT and GPT-BERT sizes from the reference configs (research/ltg_bert.md §3, §5.1).
    "ltg-bert": {
        "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256),
        "xs": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=512),
        "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1024),
        "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2048),
    },
    "gpt-bert": {
        "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=320),
        "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1280),
        "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2560),
    },
}

# Keys that Hugging Face writes into config.json and that carry no meaning for masklm.
HF_META_KEYS = frozenset(
    {
        "model_type", "architectures", "transformers_version", "torch_dtype", "dtype", "use_cache",
        "position_embedding_type", "classifier_dropout", "gradient_checkpointing", "auto_map",
        "masklm_version", "is_decoder", "add_cross_attention", "tie_word_embeddings", "return_dict",
        "output_hidden_states", "output_attentions", "chunk_size_feed_forward", "id2label", "label2id",
        "problem_type", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id", "mask_token_id",
        "_name_or_path", "_attn_implementation_autoset", "layer_norm_epsilon", "finetuning_task",
        "is_encoder_decoder", "cross_attention_hidden_size", "pruned_heads", "tokenizer_class",
        "prefix", "task_specific_params", "decoder_start_token_id", "num_labels",
    }
)


def read_json_object(file: Path, error: type[MaskLMError], fix: str) -> dict[str, Any]:
    """A JSON file that must hold an object; ``error(...)`` naming the file and ``fix`` otherwise."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{file} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise error(f"{file} must hold a JSON object; {fix}")
    return data


def _type_ok(value: Any, annotation: Any) -> bool:
    """Whether ``value`` fits a (simple) type annotation; int is accepted where float is asked."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        element = args[0] if args and (origin is list or len(args) == 2 and args[1] is Ellipsis) else Any
        return isinstance(value, (list, tuple)) and all(_type_ok(v, element) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's top-level table; ConfigError naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing .toml file to --config")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the file") from None


def dataclass_from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """``cls(**data)`` after checking every key is a field of ``cls`` and every value fits its annotation;
    ConfigError naming ``where`` (a file or "flags") and the key otherwise."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}; known keys are: {', '.join(sorted(known))}"
        )
    for key, value in data.items():
        if not _type_ok(value, hints[key]):
            raise ConfigError(f"{where}: {key!r} must be {_type_name(hints[key])}, got {value!r}")
        if not _finite(value):
            raise ConfigError(f"{where}: {key!r} must be a finite number, got {value!r}")
    return cls(**data)


def _type_name(annotation: Any) -> str:
    """``int``, ``list[float]``, ``str | None``: the annotation as a user reads it."""
    return getattr(annotation, "__name__", None) if not typing.get_args(annotation) else str(annotation)


def _finite(value: Any) -> bool:
    """No NaN or infinity anywhere in ``value`` (a number, or a list or table of them): TOML and JSON
    (Python's reader) both accept ``nan`` and ``inf``, and no field of a config means either."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def check_range(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False, where: str = "") -> None:
    """ConfigError ``"{where}{name} must be in [low, high), got value"`` unless ``value`` is a finite number
    within the bounds (open or closed at each end; None: unbounded). NaN fails every bound."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "(-inf" if low is None else f"{'(' if low_open else '['}{low:g}"
        hi = "inf)" if high is None else f"{high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{where}{name} must be a number in {lo}, {hi}, got {value!r}")


@dataclass
class ModelConfig:
    """Architecture and sizes of a model. ``build_model(config)`` turns it into a module."""

    arch: str = "bert"
    vocab_size: int = 16384
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    max_position_embeddings: int = 512
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 0
    layer_norm_eps: float | None = None  # 1e-12 for BERT, 1e-7 for LTG-BERT/GPT-BERT
    # BERT only
    initializer_range: float | None = None
    hidden_act: str | None = None
    type_vocab_size: int | None = None
    # LTG-BERT / GPT-BERT only
    position_bucket_size: int | None = None
    position_split: str | None = None  # "contiguous" (BabyLM, GPT-BERT) or "interleaved" (BNC-era)
    attention_gate: bool | None = None  # GPT-BERT's gated attention
    dwa: bool | None = None  # GPT-BERT's DenseFormer-style layer weighting

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown architecture {self.arch!r}; choose one of: {', '.join(ARCHS)}")
        own, other = (BERT_FIELDS, LTG_FIELDS) if self.arch == "bert" else (LTG_FIELDS, BERT_FIELDS)
        for name in other:
            if name not in own and getattr(self, name) is not None:
                raise ConfigError(
                    f"model config: {name!r} is not a field of {self.arch} configs (it belongs to "
                    f"{'bert' if self.arch != 'bert' else 'ltg-bert/gpt-bert'}); remove it"
                )
        defaults = dict(own)
        if self.arch == "gpt-bert":
            defaults.update(attention_gate=True, dwa=True)
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.validate()

    @property
    def family(self) -> str:
        return "bert" if self.arch == "bert" else "ltg"

    def validate(self) -> None:
        if self.position_split not in (None, "contiguous", "interleaved"):
            raise ConfigError(
                f"model config: position_split must be contiguous or interleaved, got {self.position_split!r}"
            )
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model config: {name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"model config: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}; pick sizes that divide"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model config: {name} must be in [0, 1), got {getattr(self, name)}")
        self._validate_family_fields()

    def _validate_family_fields(self) -> None:
        """Ranges that torch would otherwise meet as an assertion, a negative dimension or a NaN."""
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"model config: pad_token_id must be a token id in [0, vocab_size {self.vocab_size}), "
                              f"got {self.pad_token_id}")
        check_range("layer_norm_eps", self.layer_norm_eps, 0.0, 1.0, low_open=True, where="model config: ")
        if self.family == "bert":
            check_range("initializer_range", self.initializer_range, 0.0, where="model config: ")
            if self.type_vocab_size < 1:
                raise ConfigError(f"model config: type_vocab_size must be >= 1, got {self.type_vocab_size}")
        elif not 2 <= self.position_bucket_size <= MAX_POSITION_BUCKET_SIZE:
            raise ConfigError(f"model config: position_bucket_size must be in [2, {MAX_POSITION_BUCKET_SIZE}], "
                              f"got {self.position_bucket_size}")

    def min_parameters(self) -> int:
        """A lower bound on the model's parameter count (word embeddings, and per layer the four attention
        projections and the two feed-forward matrices; every architecture here has at least these), so a
        config can be checked against a weights file or the memory before anything is allocated."""
        h = self.hidden_size
        return self.vocab_size * h + self.num_hidden_layers * (4 * h * h + 2 * h * self.intermediate_size)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model config") -> ModelConfig:
        return dataclass_from_dict(cls, dict(data), where)

    @classmethod
    def from_preset(cls, arch: str, size: str, **overrides: Any) -> ModelConfig:
        if arch not in SIZES:
            raise ConfigError(f"unknown architecture {arch!r}; choose one of: {', '.join(SIZES)}")
        if size not in SIZES[arch]:
            raise ConfigError(
                f"unknown size {size!r} for {arch}; choose one of: {', '.join(SIZES[arch])}"
            )
        return cls.from_dict({"arch": arch, **SIZES[arch][size], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """The fields of this architecture's family (the other family's are None and left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def to_json_dict(self) -> dict[str, Any]:
        """What goes into a model folder's ``config.json`` (Hugging Face compatible for BERT)."""
        out = self.to_dict()
        if self.arch == "bert":
            out.update(model_type="bert", architectures=["BertForMaskedLM"], position_embedding_type="absolute")
        out["masklm_version"] = __version__
        return out

    @classmethod
    def from_json_dict(cls, data: dict[str, Any], where: str = "config.json") -> ModelConfig:
        """Read a model folder's config.json, ignoring the bookkeeping keys Hugging Face adds."""
        data = {k: v for k, v in data.items() if k not in HF_META_KEYS}
        if "arch" not in data:
            data["arch"] = "bert"
        return cls.from_dict(data, where)
