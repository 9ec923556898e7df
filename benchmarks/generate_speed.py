"""Parallel decoding vs left-to-right sampling of the same weights: tokens/s and quality, in one run.

The bar of issue #13: on a GPT-BERT-style hybrid trained with ``mntp`` + ``clm`` on the built-in corpus,
64 new tokens for 8 prompts in one batch, the default strategy against left-to-right sampling with the
key/value cache (temperature 1.0) should reach

- tokens/s >= 2x on the 2-core CPU (>= 5x on a GPU);
- a share of repeated 2-grams <= 2x that of real corpus text of the same length;
- a causal perplexity of the generated tokens, scored by the same model, <= 1.5x that of the
  left-to-right samples.

Every strategy is measured the same way, at 64 tokens and at 256 (``--lengths``). The model is trained
here through the library's trainer (``--objective mntp=3,clm=1``, ``--train-minutes`` on "kjv") and kept
in ``--cache`` for the next run, or taken from ``--model``. Timing runs in rounds: each round times every
config once, the order alternating between rounds so slow drift on a shared machine hits all configs
alike; each round prints one JSON line (with the load average), and the median over rounds counts. Round r
decodes with seed ``--seed`` + r, and the quality numbers pool every round's samples (8 prompts x rounds):
the perplexity of 8 samples of 64 tokens moves by a third from one seed to the next, enough to fail an
exact strategy (speculative sampling, whose samples have left-to-right's distribution) on one seed and pass
it on the next. ``ppl_vs_ar_rounds`` lists the per-round ratios. A row that misses the quality bar on the
pooled numbers says so in its ``bar`` column ("trades quality").

Three lines after the table say why drafts pay or not on this device and model: what a round of k drafts
costs in one-token steps (so (k + 1) / cost bounds its speed-up); how often each masked draft after real
text equals the causal greedy token (``draft_agreement``: what greedy speculative decoding keeps at best);
and how many of 4 drafts sampled from the masked reading a round keeps (``sampled_drafts_kept``), under
speculative sampling's exact rule and under Medusa's lenient typical acceptance (Cai et al. 2024: a draft
passes when its causal probability exceeds min(0.09, 0.3 exp(-entropy))), which gives up exactness to keep
more: if even that keeps few, no acceptance rule makes these drafts pay.

    python benchmarks/generate_speed.py                        # trains ~4 min once, then a few minutes
    python benchmarks/generate_speed.py --model runs/x/final --out gen.json
    python benchmarks/generate_speed.py --quick                # tiny settings: checks it runs end to end
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import masklm
from masklm.modeldir import read_objectives

BASELINE = "autoregressive T=1.0 (KV cache)"
PPL_BAR, REPEATS_BAR = 1.5, 2.0  # issue #13: perplexity vs left to right, repeated 2-grams vs real text
SPEED_BAR = {"cpu": 2.0, "cuda": 5.0}  # tokens/s vs left to right


def train_model(cache: Path, minutes: float, max_steps: int) -> Path:
    """The hybrid's folder: ``cache/final`` when a previous run left it, else trained now."""
    from masklm.training.config import TrainConfig  # lazy: only when no model is given
    from masklm.training.trainer import train  # lazy: only when no model is given

    final = cache / "final"
    if (final / "training_args.json").exists():
        print(f"using the cached model {final}", file=sys.stderr)
        return final
    cfg = TrainConfig(arch="gpt-bert", size="tiny", corpus=["kjv"], out=str(cache), objective="mntp=3,clm=1",
                      vocab_size=4096, seq_len=128, batch_size=32, lr=2e-3, warmup_steps=min(50, max_steps // 4),
                      time_limit=minutes, max_steps=max_steps, progress=False, log_every=50)
    return train(cfg) / "final"


def kjv_prompts(tok, n: int, prompt_tokens: int, continuation: int) -> tuple[list[str], list[list[int]]]:
    """n prompts (first tokens of n documents, spread over the corpus) and the real next tokens."""
    from masklm.data.corpus import iter_documents  # lazy: the corpus loads only here

    docs = [d for d in iter_documents(["kjv"]) if len(d) > 2000]
    prompts, real = [], []
    for d in docs[:: max(1, len(docs) // n)][:n]:
        ids = tok.encode(d, add_special_tokens=False).ids
        prompts.append(tok.decode(ids[:prompt_tokens]))
        real.append(ids[prompt_tokens:prompt_tokens + continuation])
    return prompts, real


def causal_ppl(model, tok, prompts: list[str], continuations: list[list[int]]) -> float:
    """exp(mean NLL) of the continuation tokens under the model in causal mode, given [CLS] + prompt."""
    return ppl(*causal_nll(model, tok, prompts, continuations))


def ppl(nll: float, count: int) -> float:
    return math.exp(nll / max(count, 1))


@torch.no_grad()
def causal_nll(model, tok, prompts: list[str], continuations: list[list[int]]) -> tuple[float, int]:
    """(summed NLL, tokens) of the continuation tokens under the model in causal mode, given [CLS] + prompt."""
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
    return nll, count


def repeated_bigrams(samples: list[list[int]]) -> float:
    """Mean over samples of 1 - distinct 2-grams / 2-grams."""
    shares = []
    for s in samples:
        grams = list(zip(s, s[1:]))
        if grams:
            shares.append(1 - len(set(grams)) / len(grams))
    return sum(shares) / max(len(shares), 1)


def configs(length: int) -> list[tuple[str, dict]]:
    """(name, ``Pipeline.generate`` settings) of every strategy measured; the baseline first."""
    q = max(1, length // 4)
    return [
        (BASELINE, dict(strategy="autoregressive", temperature=1.0)),
        ("default (no --strategy)", dict(strategy=None)),
        ("speculative k=1 T=1.0", dict(strategy="speculative", draft_length=1, temperature=1.0)),
        ("speculative k=2 T=1.0", dict(strategy="speculative", draft_length=2, temperature=1.0)),
        ("speculative k=4 T=1.0", dict(strategy="speculative", draft_length=4, temperature=1.0)),
        ("speculative k=8 T=1.0", dict(strategy="speculative", draft_length=8, temperature=1.0)),
        ("speculative k=4 greedy", dict(strategy="speculative", draft_length=4, temperature=0.0)),
        ("autoregressive greedy", dict(strategy="autoregressive", temperature=0.0)),
        ("threshold 0.9 block 8", dict(strategy="threshold", threshold=0.9, block_length=8)),
        ("threshold 0.9 block 32", dict(strategy="threshold", threshold=0.9, block_length=32)),
        ("threshold 0.9 block 8 no-repeat 3", dict(strategy="threshold", block_length=8, no_repeat_ngram_size=3)),
        ("threshold 0.7 block 8 T=1.0", dict(strategy="threshold", threshold=0.7, block_length=8, temperature=1.0)),
        ("mask-predict T=8", dict(strategy="mask-predict", steps=min(8, length))),
        (f"confidence T={q}", dict(strategy="confidence", steps=q)),
        (f"diffusion T={q}", dict(strategy="diffusion", steps=q)),
    ]


def timed_rounds(pipe, prompts: list[str], length: int, rounds: int, seed: int) -> dict[str, dict]:
    """Run every config ``rounds`` times (round r with seed + r), alternating the order -> per config: the
    outputs of every round (``outs``), seconds list."""
    cfgs = configs(length)
    seen: dict[str, dict] = {name: {"seconds": [], "outs": []} for name, _ in cfgs}
    for r in range(rounds):
        order = cfgs if r % 2 == 0 else cfgs[::-1]
        line = {"round": r, "length": length, "load_average": os.getloadavg(), "seconds": {}}
        for name, kw in order:
            t0 = time.perf_counter()
            out = pipe.generate(prompts, length=length, seed=seed + r, **kw)
            dt = time.perf_counter() - t0
            seen[name]["seconds"].append(dt)
            seen[name]["outs"].append(out)
            line["seconds"][name] = round(dt, 4)
        print(json.dumps(line), file=sys.stderr)
    return seen


def rows_for(pipe, length: int, args) -> list[dict]:
    """The table rows of one length: the real text, then every config against the baseline."""
    tok, model = pipe.tokenizer, pipe.model
    prompts, real = kjv_prompts(tok, args.batch, args.prompt_tokens, length)
    pipe.generate(prompts, length=8, strategy="mask-predict", steps=2, seed=0)  # warm up
    real_rep = repeated_bigrams(real)
    rows = [{"config": "real KJV text", "length": length, "causal_ppl": causal_ppl(model, tok, prompts, real),
             "repeated_2grams": real_rep}]
    seen = timed_rounds(pipe, prompts, length, args.rounds, args.seed)
    for name, got in seen.items():
        out, seconds = got["outs"][0], statistics.median(got["seconds"])
        per_round = [[r["token_ids"] for r in o] for o in got["outs"]]
        samples = [s for each in per_round for s in each]  # every round's samples, pooled
        nlls = [causal_nll(model, tok, prompts, each) for each in per_round]  # (NLL, tokens) per round
        rows.append({"config": name, "strategy": out[0]["strategy"], "length": length, "batch": len(prompts),
                     "network_calls": out[0]["network_calls"], "tokens_per_call": out[0]["tokens_per_call"],
                     "stats": out[0]["stats"], "seconds": seconds,
                     "tokens_per_s": sum(map(len, per_round[0])) / seconds,
                     "ppl_rounds": [ppl(*nll) for nll in nlls],
                     "causal_ppl": ppl(sum(n for n, _ in nlls), sum(c for _, c in nlls)),  # pooled
                     "repeated_2grams": repeated_bigrams(samples), "example": out[0]["generated"][:160]})
    base = next(r for r in rows if r["config"] == BASELINE)
    for r in rows[1:]:
        r["speedup_vs_ar"] = r["tokens_per_s"] / base["tokens_per_s"]
        r["ppl_vs_ar"] = r["causal_ppl"] / base["causal_ppl"]
        r["ppl_vs_ar_rounds"] = [a / b for a, b in zip(r["ppl_rounds"], base["ppl_rounds"])]
        r["repeats_vs_real"] = r["repeated_2grams"] / max(real_rep, 1e-9)
        r["bar"] = "meets" if r["ppl_vs_ar"] <= PPL_BAR and r["repeats_vs_real"] <= REPEATS_BAR else "trades quality"
        if r["stats"].get("draft_rounds"):  # what DraftSizer.COSTS models: a round, in one-token steps
            r["round_cost_steps"] = (r["seconds"] / r["stats"]["rounds"]) / (base["seconds"] / length)
    return rows


TYPICAL = (0.09, 0.3)  # Medusa's typical acceptance (posterior_threshold, posterior_alpha), Cai et al. 2024


def kept_drafts(p_logp: torch.Tensor, q_logp: torch.Tensor, drafts: torch.Tensor) -> dict:
    """How many of k drafts a round keeps. p_logp / q_logp ``[N, k, V]``: causal / masked log-probabilities at
    the drafted positions (p given the prefix and the drafts before it), drafts ``[N, k]`` drawn from q ->
    ``exact``: the expected count kept by speculative sampling, the mean of sum_i prod_{j<=i} min(1, p_j/q_j)
    at the drafts; ``typical``: the mean count of leading drafts whose causal probability exceeds
    min(0.09, 0.3 exp(-entropy of p)); ``typical_pass``: the share of drafts passing that test, per position."""
    pd = p_logp.gather(2, drafts[..., None]).squeeze(2).double()  # [N, k]
    qd = q_logp.gather(2, drafts[..., None]).squeeze(2).double()
    exact = (pd - qd).clamp(max=0).exp().cumprod(1).sum(1).mean()
    p = p_logp.double().exp()
    entropy = -torch.where(p > 0, p * p_logp.double(), torch.zeros_like(p)).sum(-1)  # [N, k]
    passes = pd.exp() > torch.clamp(TYPICAL[1] * torch.exp(-entropy), max=TYPICAL[0])
    return {"exact": float(exact), "typical": float(passes.long().cumprod(1).sum(1).double().mean()),
            "typical_pass": passes.double().mean(0).tolist()}


def top_probability(logp: torch.Tensor, at_least: tuple[float, ...] = (0.5, 0.9)) -> dict:
    """How sure a reading is of its best token, per position. logp ``[N, k, V]`` -> ``mean``: the mean top
    probability at each of the k positions; ``at_least``: per threshold t, the share of the N rows whose
    top probability is >= t at each position (what threshold commits could take at that position)."""
    top = logp.double().exp().amax(-1)  # [N, k]
    return {"mean": top.mean(0).tolist(), "at_least": {str(t): (top >= t).double().mean(0).tolist() for t in at_least}}


@torch.no_grad()
def draft_measures(pipe, model_dir: Path, n_texts: int, seed: int, prefix_tokens: int = 40, k: int = 4,
                   draws: int = 8, block: int = 8) -> dict:
    """How good the masked drafts are after ``n_texts`` real KJV prefixes -> ``greedy``: the share at which
    masked draft i (i = 1..k) equals the causal greedy token i (what greedy speculative decoding keeps at
    best); ``sampled``: ``kept_drafts`` of ``draws`` sets of k drafts per prefix sampled from the masked
    reading at temperature 1; ``confidence``: ``top_probability`` of the masked reading of a block of
    ``block`` masks after the prefix (the threshold strategy's first step) and of the causal reading of the
    real text at the same columns (``causal``). The prefix plus the ``[MASK]``s runs bidirectionally and is
    read where the masked objective predicts (``mask_shift``); the causal reading runs left to right;
    special tokens are banned in both, as the decoders ban them."""
    from masklm.objectives.reading import TrainedAs  # lazy, like the other library imports here

    tok, model = pipe.tokenizer, pipe.model
    device = next(model.parameters()).device
    shift = TrainedAs.from_names(read_objectives(model_dir)).mask_shift
    _, real = kjv_prompts(tok, n_texts, 0, prefix_tokens + block)
    text = torch.tensor([[tok.cls_id] + ids for ids in real if len(ids) == prefix_tokens + block], device=device)
    prefix = text[:, :prefix_tokens + 1]
    n = prefix.shape[1]

    def log_probs(hidden: torch.Tensor) -> torch.Tensor:
        logits = model.predict(hidden).float()
        logits[..., tok.special_ids] = -math.inf
        return torch.log_softmax(logits, -1)

    greedy = prefix
    for _ in range(k):
        greedy = torch.cat([greedy, log_probs(model.encode(greedy, causal=True)[:, -1:]).argmax(-1)], 1)
    masked = torch.cat([prefix, torch.full((prefix.shape[0], k), tok.mask_id, device=device)], 1)
    q_logp = log_probs(model.encode(masked, causal=False)[:, n - shift:n - shift + k])  # [N, k, V]
    generator = torch.Generator(device=device).manual_seed(seed)
    q_logp = q_logp.repeat_interleave(draws, 0)  # [N * draws, k, V]
    drafts = torch.multinomial(q_logp.flatten(0, 1).exp(), 1, generator=generator).view(-1, k)
    drafted = torch.cat([prefix.repeat_interleave(draws, 0), drafts], 1)
    p_logp = log_probs(model.encode(drafted, causal=True)[:, n - 1:n - 1 + k])  # predicts the drafts' columns
    blank = torch.cat([prefix, torch.full((prefix.shape[0], block), tok.mask_id, device=device)], 1)
    masked_top = top_probability(log_probs(model.encode(blank, causal=False)[:, n - shift:n - shift + block]))
    causal_top = top_probability(log_probs(model.encode(text, causal=True)[:, n - 1:n - 1 + block]))
    return {"greedy": (q_logp[::draws].argmax(-1) == greedy[:, n:]).float().mean(0).tolist(),
            "sampled": kept_drafts(p_logp, q_logp, drafts),
            "confidence": {"masked": masked_top, "causal": causal_top}}


def issue_bar(rows: list[dict], device: str) -> list[dict]:
    """The bar of issue #13 for the default row of each length: tokens/s >= 2x left to right on a CPU (5x on a
    GPU), repeated 2-grams <= 2x real text, causal perplexity <= 1.5x left to right -> one dict per length."""
    need = SPEED_BAR["cpu" if device == "cpu" else "cuda"]
    return [{"length": r["length"], "strategy": r["strategy"], "speedup_vs_ar": r["speedup_vs_ar"], "speed_needed": need,
             "speed": r["speedup_vs_ar"] >= need, "repeats": r["repeats_vs_real"] <= REPEATS_BAR,
             "ppl": r["ppl_vs_ar"] <= PPL_BAR}
            for r in rows if r["config"] == "default (no --strategy)"]


def print_table(rows: list[dict]) -> None:
    print("\n| length | config | calls | tokens/call | tokens/s | vs AR | causal PPL (pooled vs AR) | repeated 2-grams "
          "(vs real) | bar |", file=sys.stderr)
    print("|---|---|---|---|---|---|---|---|---|", file=sys.stderr)
    for r in rows:
        if "tokens_per_s" not in r:
            print(f"| {r['length']} | {r['config']} | | | | | {r['causal_ppl']:.1f} | {r['repeated_2grams']:.3f} | |",
                  file=sys.stderr)
            continue
        spread = r["ppl_vs_ar_rounds"]  # the ratio seed by seed, beside the pooled one
        each = f"; rounds {min(spread):.2f}-{max(spread):.2f}" if len(spread) > 1 else ""
        print(f"| {r['length']} | {r['config']} ({r['strategy']}) | {r['network_calls']} | {r['tokens_per_call']:.2f} "
              f"| {r['tokens_per_s']:.0f} | {r['speedup_vs_ar']:.2f}x | {r['causal_ppl']:.1f} ({r['ppl_vs_ar']:.2f}x{each}) "
              f"| {r['repeated_2grams']:.3f} ({r['repeats_vs_real']:.1f}x) | {r['bar']} |", file=sys.stderr)
    for length in sorted({r["length"] for r in rows}):  # what DraftSizer.COSTS models: C(k) = 2 (1 + gamma k) + delta
        # a round of k drafts yields at most k + 1 tokens: (k + 1) / cost bounds the speed-up of k drafts on
        # this device and model, however good the drafts
        costs = [f"{r['config']}: {r['round_cost_steps']:.2f} (at most "
                 f"{(int(r['config'].split('k=')[1].split()[0]) + 1) / r['round_cost_steps']:.2f}x)" for r in rows
                 if r["length"] == length and "round_cost_steps" in r and r["config"].startswith("speculative k=")]
        if costs:
            print(f"round cost in one-token left-to-right steps, length {length}: " + "; ".join(costs), file=sys.stderr)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder trained with clm in its objectives (default: train one)")
    ap.add_argument("--cache", help="where the trained model is kept between runs "
                                    "(default: <tmp>/masklm-generate-speed/hybrid-<minutes>min)")
    ap.add_argument("--train-minutes", type=float, default=4.0)
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--batch", type=int, default=8, help="prompts per batched call")
    ap.add_argument("--prompt-tokens", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (alternating order; the median counts)")
    ap.add_argument("--threads", type=int, help="torch threads")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny settings (a few training steps, 16 tokens, "
                                                         "2 prompts, 1 round): checks the script end to end")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    if args.quick:
        args.train_minutes, args.lengths, args.batch, args.rounds = 0.3, [16], 2, 1
    return args


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average at start: {os.getloadavg()}", file=sys.stderr)
    if args.model:
        model_dir = Path(args.model)
    else:
        tag = "quick" if args.quick else f"{args.train_minutes:g}min"
        cache = Path(args.cache or Path(tempfile.gettempdir()) / "masklm-generate-speed" / f"hybrid-{tag}")
        model_dir = train_model(cache, args.train_minutes, 30 if args.quick else 100_000)
    pipe = masklm.load(model_dir, device=args.device)
    rows = [row for length in args.lengths for row in rows_for(pipe, length, args)]
    drafts = draft_measures(pipe, model_dir, 8 if args.quick else 64, args.seed)
    agreement, sampled = drafts["greedy"], drafts["sampled"]
    result = {"model": str(model_dir), "objectives": read_objectives(model_dir), "draft_agreement": agreement,
              "sampled_drafts_kept": sampled, "block_confidence": drafts["confidence"],
              "parameters": sum(p.numel() for p in pipe.model.parameters()), "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "device": args.device, "rounds": args.rounds, "load_average_end": os.getloadavg(),
              "issue_13_bar": issue_bar(rows, torch.device(args.device).type), "rows": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print_table(rows)
    print("masked draft i equals the causal greedy token i, after 40 tokens of real text (i = 1..4): "
          + " / ".join(f"{a:.2f}" for a in agreement), file=sys.stderr)
    for bar in result["issue_13_bar"]:
        print(f"issue #13 bar, {bar['length']} tokens, default ({bar['strategy']}): speed {bar['speedup_vs_ar']:.2f}x "
              f"(needs {bar['speed_needed']:g}x: {'met' if bar['speed'] else 'not met'}), repeated 2-grams "
              f"{'met' if bar['repeats'] else 'not met'}, perplexity {'met' if bar['ppl'] else 'not met'}",
              file=sys.stderr)
    print(f"of 4 drafts sampled from the masked reading after real text, a round keeps {sampled['exact']:.2f} "
          f"(speculative sampling) or {sampled['typical']:.2f} (Medusa's typical acceptance; per draft "
          + " / ".join(f"{a:.2f}" for a in sampled["typical_pass"]) + " pass)", file=sys.stderr)
    masked, causal = drafts["confidence"]["masked"], drafts["confidence"]["causal"]
    print("top probability in a block of 8 masks after real text, masked reading (positions 1..8): "
          + " / ".join(f"{a:.2f}" for a in masked["mean"]) + "; share >= 0.5: "
          + " / ".join(f"{a:.2f}" for a in masked["at_least"]["0.5"]) + "; causal reading of the real text: "
          + f"{statistics.mean(causal['mean']):.2f} mean, >= 0.5 at {statistics.mean(causal['at_least']['0.5']):.2f}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
