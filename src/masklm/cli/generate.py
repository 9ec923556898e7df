"""``masklm generate``: text from a model folder with any strategy of ``masklm.generation`` (without
``--strategy``, the default rule picks one from the folder's objectives and says why on stderr)."""

from __future__ import annotations

import argparse
import json
import sys

from masklm.cli.model_flags import add_model_flags, load_pipeline
from masklm.errors import InputError
from masklm.generation.config import STRATEGIES, pick_strategy
from masklm.wording import counted


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text (parallel masked decoding or left to right)",
                       description="Generate text. Prompts are continued by --length tokens; --template fills "
                                   "[MASK] spans ('The [MASK]*5 of the king'). All inputs decode in one batch. "
                                   "See docs/generation.md for choosing a strategy.")
    p.add_argument("prompts", nargs="*", help="prompts to continue (none: one unconditional sample)")
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--template", action="append", help="infilling template; repeat for several")
    p.add_argument("--strategy", choices=STRATEGIES,
                   help="default: picked from the model's objectives (speculative after clm, else threshold)")
    p.add_argument("--length", type=int, help="tokens to generate after each prompt (default 32)")
    p.add_argument("--steps", type=int, help="iterations / steps (default: per strategy)")
    p.add_argument("--temperature", type=float, help="0 = argmax (default: 0 for mask-predict, confidence and "
                                                     "threshold; 1 for diffusion, autoregressive and speculative)")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int, help="same seed, same text")
    p.add_argument("--num-samples", type=int, default=1, help="samples per prompt (default 1)")
    p.add_argument("--stop-at-sep", action="store_true", help="end a continuation at a generated [SEP]")
    p.add_argument("--schedule", choices=("cosine", "linear"), help="confidence: commit schedule (default cosine)")
    p.add_argument("--commit", choices=("confidence", "margin"),
                   help="confidence: rank by probability (default) or by top-1 minus top-2 margin")
    p.add_argument("--choice-temperature", type=float,
                   help="confidence: Gumbel noise on the ranking, annealed to 0 (default 0; MaskGIT uses 4.5)")
    p.add_argument("--block-length", type=int, help="confidence, threshold: semi-autoregressive blocks of this many "
                                                    "tokens (threshold: default 8)")
    p.add_argument("--threshold", type=float, help="threshold: commit every token this confident (default 0.9)")
    p.add_argument("--draft-length", type=int, help="speculative: tokens drafted per round (default: sized every "
                                                    "round, 0-4, by how many drafts were kept so far)")
    p.add_argument("--no-repeat-ngram-size", type=int, help="any strategy: never repeat an n-gram of this size")
    p.add_argument("--repetition-penalty", type=float, help="any strategy: >1 discourages tokens already present")
    p.add_argument("--length-beam", type=int, help="mask-predict: try this many lengths around --length (default 1)")
    p.add_argument("--no-cache", action="store_true",
                   help="autoregressive, diffusion, threshold: no key/value or logits cache")
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    add_model_flags(p)
    p.add_argument("--json", action="store_true", help="print text, tokens, network calls and time as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.num_samples < 1:
        raise InputError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.template and args.prompts:
        raise InputError("pass prompts or --template, not both")
    pipe = load_pipeline(args)
    _check_strategy_flags(args, pipe.objectives)
    options = dict(strategy=args.strategy, length=args.length, steps=args.steps, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop_at_sep=args.stop_at_sep,
                   schedule=args.schedule or "cosine", commit=args.commit or "confidence",
                   choice_temperature=args.choice_temperature or 0.0, block_length=args.block_length,
                   length_beam=args.length_beam or 1, cache=not args.no_cache,
                   threshold=0.9 if args.threshold is None else args.threshold, draft_length=args.draft_length,
                   no_repeat_ngram_size=args.no_repeat_ngram_size, repetition_penalty=args.repetition_penalty)
    if args.template:
        results = pipe.generate(template=[t for t in args.template for _ in range(args.num_samples)], **options)
    else:
        prompts = [p for p in (args.prompts or [None]) for _ in range(args.num_samples)]
        results = pipe.generate(prompts, **options)
    first = results[0]
    if first["why"]:
        print(f"masklm: strategy {first['strategy']} ({first['why']}; --strategy chooses another)", file=sys.stderr)
    n = args.num_samples
    if n > 1 and all(len({r["text"] for r in results[i:i + n]}) == 1 for i in range(0, len(results), n)):
        print(f"masklm: the {n} samples of each input are the same text: {first['strategy']} picks the likeliest "
              "tokens at temperature 0 (its default); --temperature 1 samples", file=sys.stderr)
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=2))
        return 0
    for r in results:
        print(r["text"])
    steps = "" if first["steps"] is None else f"{counted(first['steps'], 'step')}, "
    calls = counted(first["network_calls"], "network call")
    print(f"masklm: {first['strategy']}, {steps}{calls}, "
          f"{first['tokens_per_call']:.2f} tokens per call, {first['seconds']:.2f} s", file=sys.stderr)
    return 0


# flags only some strategies read -> those strategies (one given to another strategy would be ignored: refused)
STRATEGY_FLAGS = {
    "--threshold": ("threshold",), "--draft-length": ("speculative",), "--length-beam": ("mask-predict",),
    "--schedule": ("confidence",), "--commit": ("confidence",), "--choice-temperature": ("confidence",),
    "--block-length": ("confidence", "threshold"), "--no-cache": ("autoregressive", "diffusion", "threshold"),
}


def _check_strategy_flags(args: argparse.Namespace, objectives) -> None:
    """InputError (one line) for a flag that the strategy to run never reads (``STRATEGY_FLAGS``); the
    strategy is --strategy's, or the one picked from the model's objectives (``pick_strategy``)."""
    strategy = args.strategy or pick_strategy(objectives, bool(args.template), args.steps, args.length_beam or 1,
                                              args.block_length)[0]
    for flag, readers in STRATEGY_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value not in (None, False) and strategy not in readers:
            raise InputError(f"{flag} is for {' and '.join(readers)}, not {strategy}; leave it out"
                             + ("" if args.strategy else " (or pass --strategy)"))

