"""Configuration: the model config, the training config, size presets and TOML loading.

Field names follow Hugging Face's where a field means the same thing, so a BERT ``config.json`` written
here is also a valid ``transformers.BertConfig``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from masklm.errors import ConfigError, MaskLMError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ARCHS = ("bert", "ltg-bert", "gpt-bert")

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
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}; known keys are: {', '.join(sorted(known))}"
        )
    for key, value in data.items():
        if not _type_ok(value, hints[key]):
            raise ConfigError(
                f"{where}: {key!r} must be {getattr(hints[key], '__name__', hints[key])}, got {value!r}"
            )
    return cls(**data)


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

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model config") -> ModelConfig:
        return _from_dict(cls, dict(data), where)

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
        from masklm import __version__

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


@dataclass
class TrainConfig:
    """Everything ``masklm train`` needs. TOML top-level keys are these fields; ``[model]`` overrides sizes."""

    # what to train
    arch: str = "bert"
    size: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)
    corpus: list[str] = field(default_factory=lambda: ["kjv"])
    out: str = "runs/masklm"
    init_from: str | None = None
    # tokenizer: an existing folder, or trained on the corpus
    tokenizer: str | None = None
    tokenizer_kind: str = "wordpiece"
    vocab_size: int = 8192
    # data
    seq_len: int = 128
    seq_len_schedule: str = "constant"  # or ltg-bert (128 -> 512 at 90%) / gpt-bert, lengths scaled by seq_len/128
    heldout_fraction: float = 0.02
    # objective and masking
    objective: str = "mlm"  # one name, an AntLM schedule "clm:4,mlm:16,clm:4" or a mix "mntp=15,clm=1"
    schedule_unit: str = "epochs"  # what an AntLM schedule's phase lengths count: epochs, steps or tokens
    masking: str = "token"  # token, whole-word or span
    mask_rate: float | str = 0.15  # or a linear schedule such as "0.30->0.15"
    mask_split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    diffusion_eps: float = 1e-3
    eval_diffusion_samples: int = 4
    # optimisation
    batch_size: int = 32
    grad_accum: int = 1
    max_steps: int | None = None
    epochs: float | None = None
    optimizer: str = "adamw"  # adamw or lamb
    no_decay: str = "bert"  # which parameters skip weight decay: bert, ltg-bert or gpt-bert naming rules
    lr: float = 5e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_steps: int | float = 0.06
    schedule: str = "cosine"  # cosine, linear, constant, or the ltg-bert / gpt-bert recipes
    min_lr_ratio: float = 0.0
    lr_cooldown: int | float = 0
    clip_norm: float | None = 1.0
    seed: int = 0
    time_limit: float | None = None  # minutes; the run (and its LR schedule) is shortened to fit
    # bookkeeping
    save_every: int = 0
    keep_last: int = 2
    eval_every: int = 0
    eval_batches: int = 8
    log_every: int = 10
    resume: bool = False
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        from masklm.data.masking import STRATEGIES
        from masklm.objectives.schedule import ObjectiveSchedule
        from masklm.training.optim import NO_DECAY_STYLES, OPTIMIZERS
        from masklm.training.schedules import LR_KINDS, SEQ_LEN_PRESETS, parse_mask_rate

        if self.schedule not in LR_KINDS:
            raise ConfigError(f"schedule must be one of {', '.join(LR_KINDS)}, got {self.schedule!r}")
        if self.masking not in STRATEGIES:
            raise ConfigError(f"masking must be one of {', '.join(STRATEGIES)}, got {self.masking!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.no_decay not in NO_DECAY_STYLES:
            raise ConfigError(f"no_decay must be one of {', '.join(NO_DECAY_STYLES)}, got {self.no_decay!r}")
        if self.tokenizer_kind not in ("wordpiece", "bpe"):
            raise ConfigError(f"tokenizer_kind must be wordpiece or bpe, got {self.tokenizer_kind!r}")
        parse_mask_rate(self.mask_rate)
        if self.seq_len_schedule not in SEQ_LEN_PRESETS:
            raise ConfigError(f"seq_len_schedule must be one of {', '.join(SEQ_LEN_PRESETS)}, "
                              f"got {self.seq_len_schedule!r}")
        ObjectiveSchedule.parse(self.objective, self.schedule_unit)  # errors before any training starts
        if not 0.0 < self.diffusion_eps < 1.0:
            raise ConfigError(f"diffusion_eps must be in (0, 1), got {self.diffusion_eps}")
        if self.lr_cooldown < 0:
            raise ConfigError(f"lr_cooldown must be >= 0, got {self.lr_cooldown}")
        if len(self.mask_split) != 3 or abs(sum(self.mask_split) - 1.0) > 1e-6 or min(self.mask_split) < 0:
            raise ConfigError(
                f"mask_split must be three non-negative shares (mask, random, keep) summing to 1, got {self.mask_split}"
            )
        for name in ("batch_size", "grad_accum", "seq_len", "log_every", "keep_last", "eval_diffusion_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"epochs must be > 0, got {self.epochs}")
        if self.time_limit is not None and self.time_limit <= 0:
            raise ConfigError(f"time_limit must be > 0 minutes, got {self.time_limit}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.heldout_fraction < 0.5:
            raise ConfigError(f"heldout_fraction must be in [0, 0.5), got {self.heldout_fraction}")
        if isinstance(self.corpus, str):
            self.corpus = [self.corpus]

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "train config") -> TrainConfig:
        return _from_dict(cls, dict(data), where)

    @classmethod
    def from_toml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing .toml file to --config")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc}); fix the file") from None
        data.update(overrides or {})
        return cls.from_dict(data, where=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def max_seq_len(self) -> int:
        """The longest rows the run reads (the last phase of a sequence-length schedule)."""
        from masklm.training.schedules import SeqLenSchedule

        return SeqLenSchedule.preset(self.seq_len_schedule, base_seq_len=self.seq_len).max_seq_len

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig.from_preset(
            self.arch, self.size, **{"vocab_size": vocab_size, "max_position_embeddings": max(512, self.max_seq_len),
                                      **self.model}
        )

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
