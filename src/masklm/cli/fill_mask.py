"""``masklm fill-mask``: top-k predictions for each [MASK] in one or more texts."""

from __future__ import annotations

import argparse
import json

from masklm.cli.model_flags import add_model_flags, load_pipeline


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fill-mask", help="predict the words hidden by [MASK]",
                       description="Predict the tokens at each [MASK] (Hugging Face fill-mask output schema).")
    p.add_argument("texts", nargs="+", help="text containing the model's mask token, e.g. [MASK]")
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--top-k", type=int, default=5, help="predictions per mask (default 5)")
    p.add_argument("--targets", nargs="+", help="only rank these words")
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    add_model_flags(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    pipe = load_pipeline(args)
    result = pipe.fill_mask(args.texts, top_k=args.top_k, targets=args.targets)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
        return 0
    per_input = [result] if len(args.texts) == 1 else result
    tok = pipe.tokenizer
    for text, res in zip(args.texts, per_input):
        masks = res if res and isinstance(res[0], list) else [res]
        print(text)
        for m, candidates in enumerate(masks):
            if len(masks) > 1:
                print(f"  mask {m + 1}:")
            for c in candidates:  # with several masks the sequence keeps the specials (Hugging Face's JSON):
                # the other masks show; a person reading the text needs no [CLS] and [SEP] around it
                seq = c["sequence"].removeprefix(f"{tok.cls_token} ").removesuffix(f" {tok.sep_token}")
                print(f"  {c['score']:.4f}  {c['token_str']:<16} {seq}")
    return 0
