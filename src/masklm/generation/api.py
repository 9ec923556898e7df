"""``generate``: resolve the settings (``GenerationConfig``), build the canvas, run one strategy, read the
text back.

Which position holds the prediction for token j depends on how the weights were trained (the model
folder's ``training_args.json`` lists its ``objectives``):

- ``mlm`` / ``diffusion``: at j itself (no shift);
- ``mntp`` (GPT-BERT), or ``clm`` alone: at j - 1, in the masked strategies too;
- ``autoregressive`` (and ``speculative``'s verifier) always reads causal logits at j - 1, which is what
  ``clm`` trains. A model trained
  with ``mntp`` but never ``clm`` gets a warning (never trained with causal attention); one trained with
  neither is refused. Without ``training_args.json`` (imported weights) the objectives are unknown: no
  shift, and ``autoregressive`` is refused unless ``objectives=[...]`` says otherwise.

``strategy=None`` picks the strategy from the objectives (``config.pick_strategy``); the result says which
and why (``why``), with the network calls and the tokens committed per call.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from masklm.errors import InputError
from masklm.generation.autoregressive import autoregressive
from masklm.generation.canvas import Canvas, build_canvas, prompt_rows, read_rows, template_rows
from masklm.generation.confidence import confidence_decode
from masklm.generation.config import GenerationConfig, pick_strategy
from masklm.generation.diffusion import diffusion_sample
from masklm.generation.mask_predict import mask_predict
from masklm.generation.sampling import Network
from masklm.generation.speculative import speculative_decode
from masklm.generation.threshold import threshold_decode
from masklm.objectives.reading import TrainedAs

# per-call fields each result may carry
CALL_FIELDS = ("network_calls", "seconds", "strategy", "steps", "tokens_per_call", "stats", "why")


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


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer, prompt: str | None | Sequence[str | None] = None,
             config: GenerationConfig | None = None, template: str | Sequence[str] | None = None
             ) -> dict[str, Any]:
    """Generate text for one or many prompts (or templates) in one batched call; ``config`` None means
    ``GenerationConfig()``.

    -> ``{"results": [{text, generated, tokens, token_ids}, ...], "network_calls", "seconds", "strategy",
    "steps", "tokens_generated", "tokens_per_call", "stats", "why", "network": Network}``; ``stats`` holds
    what a strategy reports (speculative: rounds, mean accepted drafts), ``why`` the reason for a strategy
    picked by default (None when the caller named one); ``network.inputs`` holds every canvas ``[B, W]``
    the model saw when ``config.trace``. See docs/generation.md for the settings.
    """
    started = time.perf_counter()
    config = config or GenerationConfig()
    if prompt is not None and template is not None:
        raise InputError("pass a prompt or a template, not both")
    templated = template is not None
    items = ([template] if isinstance(template, str) else list(template)) if templated else (
        [prompt] if prompt is None or isinstance(prompt, str) else list(prompt))
    if not items:
        raise InputError("no prompts given; pass a text, a list of texts, or None for unconditional text")
    device = next(model.parameters()).device
    max_length = config.max_length or model.config.max_position_embeddings
    rows = template_rows(tokenizer, items, max_length) if templated else None
    why = None
    if config.strategy is None:
        _, why = pick_strategy(config.objectives, templated, config.steps, config.length_beam, config.block_length)
    config = config.resolve(max(sum(f) for _, f in rows) if templated else None)
    lengths = config.lengths()
    if not templated:  # row r is prompt r // len(lengths) at length lengths[r % len(lengths)]
        rows = prompt_rows(tokenizer, [p for p in items for _ in lengths], [n for _ in items for n in lengths])
    canvas = build_canvas(rows, tokenizer.pad_id, max_length, device)

    if config.strategy in ("autoregressive", "speculative"):
        check_causal(config.objectives)
    banned = torch.zeros(model.config.vocab_size, dtype=torch.bool, device=device)
    banned[[i for i in tokenizer.special_ids
            if i < banned.numel() and not (config.stop_at_sep and i == tokenizer.sep_id)]] = True
    banned[tokenizer.vocab_size:] = True  # rows of a padded embedding table (imported models): no text
    causal = config.strategy in ("autoregressive", "speculative")
    shift = 1 if causal else TrainedAs.from_names(config.objectives).mask_shift
    net = Network(model, shift, banned, trace=config.trace, repetition_penalty=config.repetition_penalty,
                  no_repeat_ngram_size=config.no_repeat_ngram_size, mask_id=tokenizer.mask_id)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(config.seed) if config.seed is not None else int(torch.seed() % 2**63))
    was_training = model.training
    model.eval()
    try:
        stats = _decode(net, canvas, tokenizer, config, generator, n_prompts=len(items))
    finally:
        model.train(was_training)
    results = read_rows(canvas, tokenizer, config.stop_at_sep)
    tokens = sum(len(r["token_ids"]) for r in results)
    return {
        "results": results, "strategy": config.strategy, "steps": config.steps, "network_calls": net.calls,
        "seconds": time.perf_counter() - started, "tokens_generated": tokens,
        "tokens_per_call": tokens / max(net.calls, 1), "stats": stats, "why": why, "network": net,
    }


def _decode(net: Network, canvas: Canvas, tokenizer, config: GenerationConfig, generator: torch.Generator,
            n_prompts: int) -> dict[str, Any]:
    """Run ``config.strategy`` on ``canvas`` in place (a resolved config: steps and temperature set) -> the
    strategy's stats (empty for most)."""
    common = dict(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p, generator=generator)
    mask_id, steps = tokenizer.mask_id, config.steps
    if config.strategy == "mask-predict":
        score = mask_predict(net, canvas, mask_id, steps, **common)
        if config.length_beam > 1:  # keep each prompt's best length by mean log-probability
            beam = len(config.lengths())
            best = score.view(n_prompts, beam).argmax(1)
            keep = torch.arange(n_prompts, device=canvas.ids.device) * beam + best
            canvas.ids, canvas.attention, canvas.gen = canvas.ids[keep], canvas.attention[keep], canvas.gen[keep]
    elif config.strategy == "confidence":
        confidence_decode(net, canvas, mask_id, steps, schedule=config.schedule, commit=config.commit,
                          block_length=config.block_length, choice_temperature=config.choice_temperature, **common)
    elif config.strategy == "diffusion":
        diffusion_sample(net, canvas, mask_id, steps, eps=config.eps, cache=config.cache, **common)
    elif config.strategy == "threshold":
        threshold_decode(net, canvas, mask_id, config.threshold, config.block_length, cache=config.cache, **common)
    elif config.strategy == "speculative":
        return speculative_decode(net, canvas, mask_id, config.draft_length,
                                  stop_id=tokenizer.sep_id if config.stop_at_sep else None,
                                  draft_shift=TrainedAs.from_names(config.objectives).mask_shift, **common)
    else:
        autoregressive(net, canvas, cache=config.cache,
                       stop_id=tokenizer.sep_id if config.stop_at_sep else None, **common)
    return {}
