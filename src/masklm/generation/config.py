"""``GenerationConfig``: the settings of one ``generate`` call, checked before any work is done.

The fields are the keywords of ``Pipeline.generate`` (see docs/generation.md). They come in two groups:
the sampling settings a client may choose (``REQUEST_FIELDS``: what ``POST /generate`` accepts, with the
prompt and the template), and the settings the caller owns: ``cache`` and ``eps`` (engine details),
``objectives`` and ``max_length`` (read off the model folder), ``trace`` (for tests).

A config checks its own fields when it is made. What depends on the input (the length a template sets,
whether there is a template at all) is checked by ``resolve``, which also fills the per-strategy
defaults of ``steps`` and ``temperature``, and picks the strategy when ``strategy`` is None
(``pick_strategy``: the default rule of docs/generation.md, from the objectives the model was trained with).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from masklm.errors import InputError
from masklm.generation.confidence import COMMITS, SCHEDULES
from masklm.objectives.reading import READINGS, TrainedAs

STRATEGIES = ("mask-predict", "confidence", "diffusion", "autoregressive", "threshold", "speculative")
DEFAULT_TEMPERATURE = {"mask-predict": 0.0, "confidence": 0.0, "diffusion": 1.0, "autoregressive": 1.0,
                       "threshold": 0.0, "speculative": 1.0}
DEFAULT_LENGTH = 32
DEFAULT_BLOCK = 8  # threshold: tokens per block when block_length is None
# Fields a request to the server may set; the others are the caller's (module docstring).
REQUEST_FIELDS = ("length", "strategy", "steps", "temperature", "top_k", "top_p", "seed", "stop_at_sep",
                  "schedule", "commit", "choice_temperature", "block_length", "length_beam", "threshold",
                  "draft_length", "no_repeat_ngram_size", "repetition_penalty")
STEPLESS = ("threshold", "speculative")  # they decide per call how many tokens to commit


def pick_strategy(objectives: Sequence[str] | None, templated: bool = False, steps: int | None = None,
                  length_beam: int = 1, block_length: int | None = None) -> tuple[str, str]:
    """The default strategy for a model trained with ``objectives`` -> (strategy, why, in one line).

    The fastest strategy that keeps left-to-right quality on the model family (docs/generation.md,
    "The default"): self-speculative decoding where the weights were trained with ``clm`` and a masked
    objective (its samples have the left-to-right distribution), left to right after ``clm`` alone,
    threshold commits in blocks otherwise; a template (infilling)
    gets confidence decoding, which sees both sides of each gap; ``steps`` or ``length_beam`` ask for a
    fixed number of passes, which is mask-predict.
    """
    trained = TrainedAs.from_names(objectives)
    if steps is not None or length_beam > 1:
        return "mask-predict", "steps or length_beam given: a fixed number of passes is mask-predict"
    if templated:
        return "confidence", "a template: infilling needs the text on both sides of each gap, which confidence sees"
    masked = any(READINGS[name].masked for name in trained.objectives)
    if trained.causal_decoding == "trained" and block_length is None:
        if not masked:
            return "autoregressive", (f"trained with {trained.describe()} only: no masked reading to draft with, "
                                      "so left to right with the key/value cache")
        return "speculative", (f"trained with {trained.describe()}, so masked-mode drafts can be verified causally: "
                               "left-to-right sampling quality; each round drafts only as many tokens as the drafts kept so far pay for "
                               "(none: a plain left-to-right step)")
    return "threshold", (f"trained with {trained.describe()}: no causal LM to verify drafts, so threshold commits "
                         "in semi-autoregressive blocks with a prefix cache")


def _whole(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a whole number >= 1, got {value!r}")


@dataclass
class GenerationConfig:
    """Settings of one generate call; InputError on construction when one is out of range."""

    length: int | None = None               # tokens after each prompt (None: 32); a template sets its own
    strategy: str | None = "mask-predict"   # None: ``pick_strategy`` from the objectives
    steps: int | None = None                # None: the strategy's default (``resolve``)
    temperature: float | None = None        # 0 = argmax; None: DEFAULT_TEMPERATURE[strategy]
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None                 # None: a fresh random seed
    stop_at_sep: bool = False
    schedule: str = "cosine"                # confidence: commit schedule (SCHEDULES)
    commit: str = "confidence"              # confidence: ranking rule (COMMITS)
    choice_temperature: float = 0.0         # confidence: annealed Gumbel noise on the ranking
    block_length: int | None = None         # confidence, threshold: semi-autoregressive blocks
    length_beam: int = 1                    # mask-predict: lengths tried around ``length``
    threshold: float = 0.9                  # threshold: commit every masked position this confident
    draft_length: int | None = None         # speculative: tokens drafted per round; None: sized per round (0-4)
    no_repeat_ngram_size: int | None = None  # every strategy: no n-gram of this size twice in a row
    repetition_penalty: float | None = None  # every strategy: HF's penalty on tokens already in the row
    cache: bool = True                      # autoregressive: key/value cache; diffusion: logits reuse
    eps: float = 1e-5                       # diffusion: the last time
    objectives: Sequence[str] | None = None  # how the weights were trained (None: unknown)
    max_length: int | None = None           # None: the model's max_position_embeddings
    trace: bool = False                     # keep every canvas the network sees (tests)

    def __post_init__(self) -> None:
        if self.strategy is not None and self.strategy not in STRATEGIES:
            raise InputError(f"unknown strategy {self.strategy!r}; choose one of: {', '.join(STRATEGIES)}")
        if self.length is not None:
            _whole("length", self.length)
        if self.temperature is not None and (self.temperature < 0 or not math.isfinite(self.temperature)):
            raise InputError(f"temperature must be >= 0 (0 = argmax), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise InputError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        if self.commit not in COMMITS:
            raise InputError(f"unknown commit rule {self.commit!r}; choose one of: {', '.join(COMMITS)}")
        if self.length_beam < 1:
            raise InputError(f"length_beam must be >= 1, got {self.length_beam}")
        if self.block_length is not None and self.strategy not in ("confidence", "threshold", None):
            raise InputError(f"block_length works with strategy confidence or threshold only, not {self.strategy}")
        if self.block_length is not None and self.block_length < 1:
            raise InputError(f"block_length must be >= 1 (tokens per block), got {self.block_length}")
        if self.steps is not None:
            _whole("steps", self.steps)
        self._check_new_fields()

    def _check_new_fields(self) -> None:
        """The threshold, speculative and repetition fields (InputError naming the field)."""
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or not (
                0.0 < self.threshold <= 1.0):
            raise InputError(f"threshold must be in (0, 1] (the confidence that commits a token), got {self.threshold!r}")
        if self.draft_length is not None:
            _whole("draft_length", self.draft_length)
        if self.no_repeat_ngram_size is not None:
            _whole("no_repeat_ngram_size", self.no_repeat_ngram_size)
        choice = self.choice_temperature
        if isinstance(choice, bool) or not isinstance(choice, (int, float)) or not 0.0 <= choice < math.inf:
            raise InputError(f"choice_temperature must be a finite number >= 0 (0: no noise on the ranking), got "
                             f"{choice!r}")
        penalty = self.repetition_penalty
        if penalty is not None and (isinstance(penalty, bool) or not isinstance(penalty, (int, float))
                                    or not (0.0 < penalty and math.isfinite(penalty))):
            raise InputError(f"repetition_penalty must be a finite number > 0 (1 = none, above 1 discourages repeats), "
                             f"got {penalty!r}")
        if self.strategy in STEPLESS and self.steps is not None:
            raise InputError(f"steps does not apply to strategy {self.strategy}: it decides per call how many "
                             "tokens to commit; leave steps out")
        if self.strategy in STEPLESS and self.length_beam > 1:
            raise InputError(f"length_beam works with strategy mask-predict only, not {self.strategy}")

    def resolve(self, template_length: int | None = None) -> GenerationConfig:
        """This config for one input -> a copy with ``length``, ``steps`` and ``temperature`` filled in.

        ``template_length``: the most masks in any template, or None for prompts. InputError for what
        the input rules out (a length beam or stop_at_sep with a template, too many steps for the length).
        """
        templated = template_length is not None
        if self.strategy is None:
            strategy, _ = pick_strategy(self.objectives, templated, self.steps, self.length_beam, self.block_length)
            return dataclasses.replace(self, strategy=strategy).resolve(template_length)
        if templated and self.length is not None:
            raise InputError("a template sets its own length through its [MASK]s; leave length out")
        length = template_length if templated else (self.length or DEFAULT_LENGTH)
        _whole("length", length)
        if self.length_beam > 1 and (self.strategy != "mask-predict" or templated):
            raise InputError("length_beam works with strategy mask-predict on a prompt (a template fixes the length)")
        if self.length_beam > 1 and length - self.length_beam // 2 < 1:
            raise InputError(f"length_beam {self.length_beam} around length {length} would try lengths below 1")
        if self.stop_at_sep and templated:
            raise InputError("stop_at_sep ends a continuation; a template's length is fixed by its masks")
        temperature = DEFAULT_TEMPERATURE[self.strategy] if self.temperature is None else float(self.temperature)
        block = (self.block_length or DEFAULT_BLOCK) if self.strategy == "threshold" else self.block_length
        return dataclasses.replace(self, length=length, steps=self._steps(length), temperature=temperature,
                                   block_length=block)

    def _steps(self, length: int) -> int | None:
        """``steps``, or the strategy's default; InputError when they do not fit ``length``."""
        if self.strategy in STEPLESS:
            return None
        block = self.block_length or length
        n_blocks = math.ceil(length / block)
        if self.steps is None:
            return {"mask-predict": min(10, length), "confidence": n_blocks * math.ceil(block / 4),
                    "diffusion": length, "autoregressive": length}[self.strategy]
        steps = self.steps
        if self.strategy == "mask-predict" and steps > length:
            raise InputError(f"steps {steps} > length {length}: mask-predict re-masks at least one token per step, "
                             f"so T = length ({length}) is already one token per step")
        if self.strategy == "confidence":
            per_block = min(block, length)
            if steps % n_blocks:
                raise InputError(f"steps {steps} must be a multiple of the number of blocks ({n_blocks})")
            if steps // n_blocks > per_block:
                raise InputError(f"steps {steps} commit fewer than one token per step (blocks of {per_block}); "
                                 f"use at most {n_blocks * per_block} steps")
        return steps

    def lengths(self) -> list[int]:
        """The lengths decoded per prompt of a resolved config: ``length``, or a beam centred on it."""
        beam = self.length_beam
        return [self.length + d for d in range(-(beam // 2), beam - beam // 2)]
