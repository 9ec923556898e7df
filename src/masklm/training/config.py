"""The training configuration: every field ``masklm train`` reads, from flags, a TOML file or a dict.

It lives beside the trainer because checking it needs the optimizers, the schedules over progress, the
masking strategies and the objectives; the generic typed loading it shares with ``ModelConfig`` is in
``masklm.config``. Field names are the TOML keys and the ``training_args.json`` keys of a run
(``training.run_record`` writes and reads that file).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from masklm.config import ModelConfig, check_range, dataclass_from_dict, read_toml
from masklm.data.masking import STRATEGIES
from masklm.errors import ConfigError
from masklm.objectives import ObjectiveOptions, ObjectiveSchedule
from masklm.training.optim import NO_DECAY_STYLES, OPTIMIZERS
from masklm.training.precision import check_precision
from masklm.training.progress import (
    LR_KINDS,
    SEQ_LEN_PRESETS,
    LRSchedule,
    MaskRateSchedule,
    SeqLenSchedule,
    build_lr_schedule,
    parse_mask_rate,
)


def _check_optimisation(cfg: TrainConfig) -> None:
    """Ranges of the optimiser and bookkeeping fields (``validate`` checks the names and schedules): every
    one a finite number where torch would otherwise raise deep inside a step or train to NaN silently."""
    check_range("lr", cfg.lr, 0.0, low_open=True)
    check_range("eps", cfg.eps, 0.0, 1.0, low_open=True)
    check_range("weight_decay", cfg.weight_decay, 0.0)
    if len(cfg.betas) != 2:
        raise ConfigError(f"betas must be two numbers in [0, 1) (Adam's beta1, beta2), got {cfg.betas}")
    for beta in cfg.betas:
        check_range("betas", beta, 0.0, 1.0, high_open=True)
    check_range("warmup_steps", cfg.warmup_steps, 0.0)
    check_range("min_lr_ratio", cfg.min_lr_ratio, 0.0, 1.0)
    if cfg.clip_norm is not None:
        check_range("clip_norm", cfg.clip_norm, 0.0, low_open=True)  # 0 would zero every gradient
    if not 0 <= cfg.seed < 2**63:
        raise ConfigError(f"seed must be a whole number in [0, 2^63), got {cfg.seed}")
    for name in ("save_every", "eval_every"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must be >= 0 (0: never), got {getattr(cfg, name)}")
    if cfg.eval_batches < 1:
        raise ConfigError(f"eval_batches must be >= 1, got {cfg.eval_batches}")
    for name in ("epochs", "time_limit"):
        if getattr(cfg, name) is not None:
            check_range(name, getattr(cfg, name), 0.0, low_open=True)
    check_range("heldout_fraction", cfg.heldout_fraction, 0.0, 0.5, high_open=True)


def physical_memory() -> int | None:
    """Bytes of RAM on this machine, None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


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
    precision: str = "fp32"  # fp32, bf16 or fp16: autocast with fp32 master weights (training.precision)
    compile: bool = False  # torch.compile the training forward
    # bookkeeping
    save_every: int = 0
    keep_last: int = 2
    eval_every: int = 0
    eval_batches: int = 8
    log_every: int = 10
    resume: bool = False  # continue the run in `out` as recorded (training/run_record.py)
    overwrite: bool = False  # start afresh in an `out` that holds files, deleting them
    rebuild_data: bool = False  # on resume: rebuild data/ from corpus files changed since the run started
    device: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """ConfigError, in one line, for the first bad field: before any data or model is touched."""
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
        check_precision(self.precision)
        if isinstance(self.corpus, str):
            self.corpus = [self.corpus]
        if self.resume and self.overwrite:
            raise ConfigError("--resume continues the run and --overwrite deletes it; pass only one of them")
        _check_optimisation(self)
        self._check_model()

    def _check_model(self) -> None:
        """The ``[model]`` table, checked now rather than after the data is prepared: a ModelConfig of the
        preset with these overrides, whose weights fit in this machine's memory."""
        config = self.model_config(self.vocab_size)
        memory = physical_memory()
        if memory and config.min_parameters() * 4 > memory:
            raise ConfigError(
                f"the model ({config.arch}, vocab_size {config.vocab_size}, hidden_size {config.hidden_size}, "
                f"num_hidden_layers {config.num_hidden_layers}) has at least {config.min_parameters():,} "
                f"parameters, more than fit in this machine's {memory / 2**30:.0f} GiB; choose smaller sizes"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "train config") -> TrainConfig:
        return dataclass_from_dict(cls, dict(data), where)

    @classmethod
    def from_toml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
        data = read_toml(path) | (overrides or {})
        return cls.from_dict(data, where=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def max_seq_len(self) -> int:
        """The longest rows the run reads (the last phase of a sequence-length schedule)."""
        return self.seq_lengths().max_seq_len

    def rows_read(self, init_length: int, positions: int, arch: str) -> int:
        """The model_max_length of the final folder's tokenizer, which Hugging Face's tokenizer truncates at
        and masklm reads to (``inference.batching.max_input_length``): for a BERT (absolute positions) the
        longest rows it has read, this run's or with ``init_from`` that folder's if longer (``init_length``,
        its tokenizer's), within its ``positions``; LTG-BERT and GPT-BERT read relative positions, so all
        ``positions``."""
        if arch != "bert":
            return positions
        return min(max(self.max_seq_len, init_length if self.init_from else 0), positions)

    # ---- what the fields build ------------------------------------------------------------------

    def seq_lengths(self) -> SeqLenSchedule:
        """``seq_len_schedule`` with lengths scaled by ``seq_len / 128``."""
        return SeqLenSchedule.preset(self.seq_len_schedule, base_seq_len=self.seq_len)

    def lr_schedule(self) -> LRSchedule:
        return build_lr_schedule(self.schedule, self.warmup_steps, self.min_lr_ratio, self.lr_cooldown)

    def mask_rates(self) -> MaskRateSchedule:
        return MaskRateSchedule.parse(self.mask_rate)

    def objective_options(self) -> ObjectiveOptions:
        """What every objective of the run is built from; the mask rate comes with each call instead."""
        return ObjectiveOptions(split=tuple(self.mask_split), masking=self.masking, seed=self.seed,
                                diffusion_eps=self.diffusion_eps)

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig.from_preset(
            self.arch, self.size, **{"vocab_size": vocab_size, "max_position_embeddings": max(512, self.max_seq_len),
                                      **self.model}
        )
