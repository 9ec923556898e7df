"""``generate``: check the request, build the canvas, run one strategy, read the text back.

Which position holds the prediction for token j depends on how the weights were trained (the model
folder's ``training_args.json`` lists its ``objectives``):

- ``mlm`` / ``diffusion``: at j itself (no shift);
- ``mntp`` (GPT-BERT), or ``clm`` alone: at j - 1, in the masked strategies too;
- ``autoregressive`` always reads causal logits at j - 1, which is what ``clm`` trains. A model trained
  with ``mntp`` but never ``clm`` gets a warning (never trained with causal attention); one trained with
  neither is refused. Without ``training_args.json`` (imported weights) the objectives are unknown: no
  shift, and ``autoregressive`` is refused unless ``objectives=[...]`` says otherwise.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from masklm.errors import InputError
from masklm.generation.autoregressive import autoregressive
from masklm.generation.canvas import build_canvas, prompt_rows, read_rows, template_rows
from masklm.generation.confidence import COMMITS, SCHEDULES, confidence_decode
from masklm.generation.diffusion import diffusion_sample
from masklm.generation.mask_predict import mask_predict
from masklm.generation.sampling import Network
from masklm.objectives.reading import TrainedAs

STRATEGIES = ("mask-predict", "confidence", "diffusion", "autoregressive")
DEFAULT_TEMPERATURE = {"mask-predict": 0.0, "confidence": 0.0, "diffusion": 1.0, "autoregressive": 1.0}


def check_causal(objectives: Sequence[str] | None) -> None:
    """Refuse (or warn about) autoregressive decoding of weights never trained with causal attention."""
    trained = TrainedAs.from_names(objectives)
    if trained.causal_decoding == "trained":
        return
    if trained.causal_decoding == "untrained":
        print(f"masklm: warning: this model was trained with {trained.describe()} but never with clm, so never "
              "with causal attention; autoregressive output may be poor (mask-predict or confidence suit it)",
              file=sys.stderr)
        return
    raise InputError(f"autoregressive decoding needs weights trained with clm (or mntp); this model has "
                     f"{trained.describe()}; use mask-predict, confidence or diffusion, or pass "
                     "objectives=['clm'] if you know better")


def _check(strategy: str, steps: int | None, length: int, temperature: float, top_k: int | None,
           top_p: float | None, length_beam: int, block_length: int | None, schedule: str, commit: str,
           templated: bool, stop_at_sep: bool) -> int:
    """Validate the request -> the number of steps to run (a default where None)."""
    if strategy not in STRATEGIES:
        raise InputError(f"unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    if not isinstance(length, int) or length < 1:
        raise InputError(f"length must be a whole number >= 1, got {length!r}")
    if temperature < 0 or not math.isfinite(temperature):
        raise InputError(f"temperature must be >= 0 (0 = argmax), got {temperature}")
    if top_k is not None and top_k < 1:
        raise InputError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p must be in (0, 1], got {top_p}")
    if schedule not in SCHEDULES:
        raise InputError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    if commit not in COMMITS:
        raise InputError(f"unknown commit rule {commit!r}; choose one of: {', '.join(COMMITS)}")
    if length_beam < 1:
        raise InputError(f"length_beam must be >= 1, got {length_beam}")
    if length_beam > 1 and (strategy != "mask-predict" or templated):
        raise InputError("length_beam works with strategy mask-predict on a prompt (a template fixes the length)")
    if length_beam > 1 and length - length_beam // 2 < 1:
        raise InputError(f"length_beam {length_beam} around length {length} would try lengths below 1")
    if stop_at_sep and templated:
        raise InputError("stop_at_sep ends a continuation; a template's length is fixed by its masks")
    if block_length is not None and (strategy != "confidence" or block_length < 1):
        raise InputError(f"block_length (>= 1) works with strategy confidence only, got {block_length} "
                         f"with {strategy}")
    n_blocks = math.ceil(length / (block_length or length))
    if steps is None:
        return {"mask-predict": min(10, length), "confidence": n_blocks * math.ceil((block_length or length) / 4),
                "diffusion": length, "autoregressive": length}[strategy]
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a whole number >= 1, got {steps!r}")
    if strategy == "mask-predict" and steps > length:
        raise InputError(f"steps {steps} > length {length}: mask-predict re-masks at least one token per step, "
                         f"so T = length ({length}) is already one token per step")
    if strategy == "confidence":
        per_block = min(block_length or length, length)
        if steps % n_blocks:
            raise InputError(f"steps {steps} must be a multiple of the number of blocks ({n_blocks})")
        if steps // n_blocks > per_block:
            raise InputError(f"steps {steps} commit fewer than one token per step (blocks of {per_block}); "
                             f"use at most {n_blocks * per_block} steps")
    return steps


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer, prompt: str | None | Sequence[str | None] = None, *,
             template: str | Sequence[str] | None = None, length: int | None = None,
             strategy: str = "mask-predict", steps: int | None = None, temperature: float | None = None,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop_at_sep: bool = False, schedule: str = "cosine", commit: str = "confidence",
             choice_temperature: float = 0.0, block_length: int | None = None, length_beam: int = 1,
             cache: bool = True, eps: float = 1e-5, objectives: Sequence[str] | None = None,
             max_length: int | None = None, trace: bool = False) -> dict[str, Any]:
    """Generate text for one or many prompts (or templates) in one batched call.

    -> ``{"results": [{text, generated, tokens, token_ids}, ...], "network_calls", "seconds", "strategy",
    "steps", "tokens_generated", "network": Network}``; ``network.inputs`` holds every canvas ``[B, W]``
    the model saw when ``trace=True``. See docs/generation.md for the parameters.
    """
    started = time.perf_counter()
    if prompt is not None and template is not None:
        raise InputError("pass a prompt or a template, not both")
    templated = template is not None
    items = ([template] if isinstance(template, str) else list(template)) if templated else (
        [prompt] if prompt is None or isinstance(prompt, str) else list(prompt))
    if not items:
        raise InputError("no prompts given; pass a text, a list of texts, or None for unconditional text")
    if templated and length is not None:
        raise InputError("a template sets its own length through its [MASK]s; leave length out")
    temperature = DEFAULT_TEMPERATURE.get(strategy, 0.0) if temperature is None else float(temperature)
    device = next(model.parameters()).device
    max_length = max_length or model.config.max_position_embeddings
    rows = template_rows(tokenizer, items, max_length) if templated else None
    length = max(sum(f) for _, f in rows) if templated else (32 if length is None else length)
    steps = _check(strategy, steps, length, temperature, top_k, top_p, length_beam, block_length, schedule,
                   commit, templated, stop_at_sep)
    lengths = [length]
    if length_beam > 1:
        lengths = [length + d for d in range(-(length_beam // 2), length_beam - length_beam // 2)]
    if not templated:  # row r is prompt r // len(lengths) at length lengths[r % len(lengths)]
        rows = prompt_rows(tokenizer, [p for p in items for _ in lengths], [n for _ in items for n in lengths])
    canvas = build_canvas(rows, tokenizer.pad_id, max_length, device)

    if strategy == "autoregressive":
        check_causal(objectives)
    banned = torch.zeros(model.config.vocab_size, dtype=torch.bool, device=device)
    banned[[i for i in tokenizer.special_ids if i < banned.numel() and not (stop_at_sep and i == tokenizer.sep_id)]] = True
    shift = 1 if strategy == "autoregressive" else TrainedAs.from_names(objectives).mask_shift
    net = Network(model, shift, banned, trace=trace)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed) if seed is not None else int(torch.seed() % 2**63))
    was_training = model.training
    model.eval()
    try:
        common = dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        mask_id = tokenizer.mask_id
        if strategy == "mask-predict":
            score = mask_predict(net, canvas, mask_id, steps, **common)
            if length_beam > 1:  # keep each prompt's best length by mean log-probability
                best = score.view(len(items), len(lengths)).argmax(1)
                keep = torch.arange(len(items), device=device) * len(lengths) + best
                canvas.ids, canvas.attention, canvas.gen = canvas.ids[keep], canvas.attention[keep], canvas.gen[keep]
        elif strategy == "confidence":
            confidence_decode(net, canvas, mask_id, steps, schedule=schedule, commit=commit,
                              block_length=block_length, choice_temperature=choice_temperature, **common)
        elif strategy == "diffusion":
            diffusion_sample(net, canvas, mask_id, steps, eps=eps, cache=cache, **common)
        else:
            autoregressive(net, canvas, cache=cache, stop_id=tokenizer.sep_id if stop_at_sep else None, **common)
    finally:
        model.train(was_training)
    results = read_rows(canvas, tokenizer, stop_at_sep)
    return {
        "results": results, "strategy": strategy, "steps": steps, "network_calls": net.calls,
        "seconds": time.perf_counter() - started, "tokens_generated": sum(len(r["token_ids"]) for r in results),
        "network": net,
    }
