"""Parallel decoding vs left-to-right decoding of the same weights: tokens/s and quality proxies.

One small hybrid model (GPT-BERT, ``--objective mntp=3,clm=1``: trained here on the built-in "kjv" corpus
for ``--train-minutes``, or ``--model DIR``) continues ``--batch`` prompts (the first ``--prompt-tokens``
tokens of different KJV chapters) by 64 and 256 tokens with

- mask-predict, T = 8 and 16 (argmax, the paper's algorithm);
- confidence (LLaDA-style commit, cosine schedule), T = length / 4;
- diffusion (MDLM ancestral sampler with the cache, temperature 1), T = length / 4 and T = length;
- autoregressive with the key/value cache, sampled (temperature 1) and greedy.

Beside each: tokens/s (generated tokens / wall seconds, all rows of one batched call), network calls, and
two quality proxies computed the same way for every strategy: the model's own causal-mode perplexity of
the generated tokens given the prompt (lower = more like what the model itself would write left to right;
greedy decoding scores well here while looping) and the share of repeated 2-grams in each sample (higher =
more repetition). The same two numbers for real KJV continuations of the same prompts are the reference.

    python benchmarks/generate_speed.py                       # trains ~4 min, then ~2-5 min of decoding
    python benchmarks/generate_speed.py --model runs/x/final --out gen.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

import masklm
from masklm.modeldir import read_objectives


def train_model(out: Path, minutes: float) -> Path:
    from masklm.training.config import TrainConfig
    from masklm.training.trainer import train

    cfg = TrainConfig(arch="gpt-bert", size="tiny", corpus=["kjv"], out=str(out), objective="mntp=3,clm=1",
                      vocab_size=4096, seq_len=128, batch_size=32, lr=2e-3, warmup_steps=50,
                      time_limit=minutes, max_steps=100_000, progress=False, log_every=50)
    return train(cfg) / "final"


def kjv_prompts(tok, n: int, prompt_tokens: int, continuation: int) -> tuple[list[str], list[list[int]]]:
    """n prompts (first tokens of n documents, spread over the corpus) and the real next tokens."""
    from masklm.data.corpus import iter_documents

    docs = [d for d in iter_documents(["kjv"]) if len(d) > 2000]
    prompts, real = [], []
    for d in docs[:: max(1, len(docs) // n)][:n]:
        ids = tok.encode(d, add_special_tokens=False).ids
        prompts.append(tok.decode(ids[:prompt_tokens]))
        real.append(ids[prompt_tokens:prompt_tokens + continuation])
    return prompts, real


@torch.no_grad()
def causal_ppl(model, tok, prompts: list[str], continuations: list[list[int]]) -> float:
    """exp(mean NLL) of the continuation tokens under the model in causal mode, given [CLS] + prompt."""
    nll, count = 0.0, 0
    for prompt, cont in zip(prompts, continuations):
        if not cont:
            continue
        head = [tok.cls_id] + tok.encode(prompt, add_special_tokens=False).ids
        ids = torch.tensor([head + cont], device=next(model.parameters()).device)
        logp = torch.log_softmax(model.predict(model.encode(ids, causal=True)).float(), -1)[0]  # [T, V]
        pos = torch.arange(len(head) - 1, ids.shape[1] - 1, device=ids.device)
        nll -= logp[pos, ids[0, pos + 1]].sum().item()
        count += len(cont)
    return math.exp(nll / max(count, 1))


def repeated_bigrams(samples: list[list[int]]) -> float:
    """Mean over samples of 1 - distinct 2-grams / 2-grams."""
    shares = []
    for s in samples:
        grams = list(zip(s, s[1:]))
        if grams:
            shares.append(1 - len(set(grams)) / len(grams))
    return sum(shares) / max(len(shares), 1)


def configs(length: int) -> list[tuple[str, dict]]:
    q = max(1, length // 4)
    return [
        ("autoregressive (KV cache), T=1.0", dict(strategy="autoregressive")),
        ("autoregressive (KV cache), greedy", dict(strategy="autoregressive", temperature=0.0)),
        ("mask-predict T=8", dict(strategy="mask-predict", steps=8)),
        ("mask-predict T=16", dict(strategy="mask-predict", steps=16)),
        (f"confidence T={q}", dict(strategy="confidence", steps=q)),
        (f"diffusion T={q}", dict(strategy="diffusion", steps=q)),
        (f"diffusion T={length}", dict(strategy="diffusion", steps=length)),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder trained with clm in its objectives (default: train one)")
    ap.add_argument("--train-minutes", type=float, default=4.0)
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--batch", type=int, default=8, help="prompts per batched call")
    ap.add_argument("--prompt-tokens", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per config (the fastest counts)")
    ap.add_argument("--threads", type=int, help="torch threads")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = Path(args.model) if args.model else train_model(Path(tempfile.mkdtemp()) / "run", args.train_minutes)
    pipe = masklm.load(model_dir, device=args.device)
    tok, model = pipe.tokenizer, pipe.model
    rows = []
    for length in args.lengths:
        prompts, real = kjv_prompts(tok, args.batch, args.prompt_tokens, length)
        pipe.generate(prompts, length=8, strategy="mask-predict", steps=2, seed=0)  # warm up
        reference = {"config": "real KJV text", "length": length,
                     "causal_ppl": causal_ppl(model, tok, prompts, real), "repeated_2grams": repeated_bigrams(real)}
        rows.append(reference)
        print(json.dumps(reference), file=sys.stderr)
        for name, kw in configs(length):
            best, out = math.inf, None
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                res = pipe.generate(prompts, length=length, seed=args.seed, **kw)
                dt = time.perf_counter() - t0
                if dt < best:
                    best, out = dt, res
            samples = [r["token_ids"] for r in out]
            row = {"config": name, "length": length, "batch": len(prompts), "steps": out[0]["steps"],
                   "network_calls": out[0]["network_calls"], "seconds": best,
                   "tokens_per_s": sum(map(len, samples)) / best,
                   "causal_ppl": causal_ppl(model, tok, prompts, samples), "repeated_2grams": repeated_bigrams(samples),
                   "example": out[0]["generated"][:160]}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
        ar = next(r for r in rows if r["length"] == length and r["config"].endswith("T=1.0"))
        for r in rows:
            if r["length"] == length and "tokens_per_s" in r:
                r["speedup_vs_ar"] = r["tokens_per_s"] / ar["tokens_per_s"]
    result = {"model": str(model_dir), "objectives": read_objectives(model_dir),
              "parameters": sum(p.numel() for p in model.parameters()), "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "rows": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print("\n| length | config | steps | calls | tokens/s | vs AR | causal PPL | repeated 2-grams |", file=sys.stderr)
    print("|---|---|---|---|---|---|---|---|", file=sys.stderr)
    for r in rows:
        if "tokens_per_s" in r:
            print(f"| {r['length']} | {r['config']} | {r['steps']} | {r['network_calls']} | {r['tokens_per_s']:.0f} "
                  f"| {r['speedup_vs_ar']:.2f}x | {r['causal_ppl']:.1f} | {r['repeated_2grams']:.3f} |", file=sys.stderr)
        else:
            print(f"| {r['length']} | {r['config']} | | | | | {r['causal_ppl']:.1f} | {r['repeated_2grams']:.3f} |",
                  file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
