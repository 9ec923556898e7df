"""PLL scoring speed: masklm's batched scorer against the straightforward approach, same model, same run.

- anchor ("straightforward"): for each sentence, one batch holding its N masked copies, the full
  forward with full-vocabulary logits at every position (``[N, L, V]``), log-softmax, pick the
  masked positions. This is how most PLL code (and the minicons/LTG-BERT scripts) runs.
- ``sparse_head_per_sentence`` (attribution only): the same one batch per sentence, but the MLM head
  runs only at the masked position of each copy.
- masklm: ``pipe.score(sentences, metric="pll")``: the copies of all sentences sorted by length and
  packed into batches of at most ``--batch-tokens`` tokens (default 4096 on CPU, 65536 on GPU), the last
  layer and the head only at the scored position of each copy.
- minicons (when installed; skipped with a message otherwise): ``scorer.MaskedLMScorer`` on the same
  weights exported as a Hugging Face folder (``masklm export-hf``), ``sequence_score`` with the original
  PLL metric, ``--minicons-batch`` sentences per call (default 32): what a user of minicons writes.

The model is masklm's BERT of ``--size`` (default small: hidden 256, 4 layers, 4 heads, FFN 1024; tiny:
hidden 128, 2 layers) with a vocabulary of 8192 (a WordPiece trained on the built-in KJV corpus); weights are untrained (speed does not depend on them). Sentences
are KJV sentences of 10-30 tokens. Every approach tokenizes inside its timed region. The script checks
that all approaches give the same scores and prints one JSON object.

    python benchmarks/score_speed.py                 # 1,000 sentences, CPU, a few minutes on 2 cores
    python benchmarks/score_speed.py --n 100         # quick look
    python benchmarks/score_speed.py --size tiny     # BERT tiny (the issue #17 figure)
    python benchmarks/score_speed.py --device cuda   # GPU (names the card in the JSON)

It prints one JSON line per round (seconds per approach, the ratios to masklm, the load average) and then
the summary object.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import tempfile
import time
from pathlib import Path

import torch


def load_sentences(tokenizer, n: int, lo: int = 10, hi: int = 30) -> list[str]:
    from masklm.data.corpus import iter_documents

    out: list[str] = []
    for doc in iter_documents(["kjv"]):
        for sentence in re.split(r"(?<=[.?!])\s+", doc):
            sentence = sentence.strip()
            if sentence and lo <= len(tokenizer.encode(sentence).ids) - 2 <= hi:
                out.append(sentence)
                if len(out) == n:
                    return out
    raise SystemExit(f"only {len(out)} sentences of {lo}-{hi} tokens found")


@torch.inference_mode()
def straightforward(model, tokenizer, sentences: list[str], sparse_head: bool = False) -> list[float]:
    device = next(model.parameters()).device
    scores = []
    for s in sentences:
        enc = tokenizer.encode(s)
        ids = torch.tensor(enc.ids, device=device)
        pos = torch.tensor([p for p, m in enumerate(enc.special_tokens_mask) if not m], device=device)
        rows = torch.arange(len(pos), device=device)
        copies = ids.repeat(len(pos), 1)                        # [N, L]
        copies[rows, pos] = tokenizer.mask_id
        if sparse_head:
            hidden = model.encode(copies)                         # [N, L, D]
            logprobs = model.predict(hidden[rows, pos]).float().log_softmax(-1)  # [N, V]
            scores.append(logprobs[rows, ids[pos]].double().sum().item())
        else:
            logits = model(copies).logits.float()                 # [N, L, V]
            logprobs = logits.log_softmax(-1)
            scores.append(logprobs[rows, pos, ids[pos]].double().sum().item())
    return scores


def _load_average() -> float | None:
    """Other processes on the machine distort CPU timings; the JSON records how busy it was."""
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except OSError:
        return None


def minicons_scorer(model, tokenizer, folder, device: torch.device):
    """minicons' MaskedLMScorer over ``model`` exported as a Hugging Face folder; None when not installed."""
    try:
        from minicons import scorer
    except ImportError:
        print("minicons is not installed: its anchor is skipped (pip install minicons to add it)")
        return None
    from masklm.hf.bert import export_bert
    from masklm.modeldir import save_model_dir

    hf_dir = export_bert(save_model_dir(folder / "masklm", model, tokenizer), folder / "hf")
    mlm = scorer.MaskedLMScorer(str(hf_dir), str(device))
    if not hasattr(mlm.tokenizer, "batch_encode_plus"):
        # transformers 5 dropped batch_encode_plus, which minicons (0.3.39) still calls; its __call__ takes
        # the same arguments and returns the same encoding, so minicons runs unchanged otherwise
        mlm.tokenizer.batch_encode_plus = mlm.tokenizer.__call__
    return mlm


def minicons_scores(mlm, sentences: list[str], batch: int) -> list[float]:
    out: list[float] = []
    for lo in range(0, len(sentences), batch):
        out += mlm.sequence_score(sentences[lo:lo + batch], reduction=lambda x: x.sum(0).item(),
                                  PLL_metric="original")
    return [float(x) for x in out]


def timed(fn, arg, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = fn(arg)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - t0


def run_rounds(approaches: dict, sentences: list[str], rounds: int, device: torch.device):
    """Every approach scores each of ``rounds`` chunks, in an order that rotates per round, so drift in
    machine load (other processes, clocks) hits all alike; one JSON line per round -> (scores, seconds)."""
    scores = {k: [] for k in approaches}
    seconds = dict.fromkeys(approaches, 0.0)
    size = -(-len(sentences) // rounds)
    for r, lo in enumerate(range(0, len(sentences), size)):
        names = list(approaches)
        names = names[r % len(names):] + names[:r % len(names)]
        spent = {}
        for name in names:
            out, spent[name] = timed(approaches[name], sentences[lo:lo + size], device)
            scores[name] += out
            seconds[name] += spent[name]
        print(json.dumps({"round": r + 1, "sentences": len(sentences[lo:lo + size]),
                          "seconds": {k: round(v, 4) for k, v in spent.items()},
                          "ratio_to_masklm": {k: round(v / spent["masklm"], 2) for k, v in spent.items()
                                              if k != "masklm"},
                          "load_average_1min": _load_average()}), flush=True)
    return scores, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="sentences (default 1000)")
    ap.add_argument("--batch-tokens", type=int,
                    help="masklm's token budget per batch (default: the library's, 4096 CPU / 65536 GPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved chunks (default 4)")
    ap.add_argument("--skip-attribution", action="store_true", help="do not time the sparse-head-only variant")
    ap.add_argument("--minicons-batch", type=int, default=32, help="sentences per minicons call (default 32)")
    ap.add_argument("--size", default="small", choices=("tiny", "small", "base"),
                    help="BERT size preset (default small: hidden 256, 4 layers, 4 heads, FFN 1024; tiny: hidden "
                         "128, 2 layers, 2 heads, FFN 512)")
    args = ap.parse_args()

    from masklm.config import ModelConfig
    from masklm.data.corpus import iter_documents
    from masklm.inference.pipeline import Pipeline
    from masklm.models import build_model
    from masklm.tokenizer import train_tokenizer

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = train_tokenizer(iter_documents(["kjv"]), kind="wordpiece", vocab_size=8192)
    torch.manual_seed(0)
    config = ModelConfig.from_preset("bert", args.size, vocab_size=8192, max_position_embeddings=512)
    model = build_model(config).to(device).eval()
    pipe = Pipeline(model, tokenizer)
    sentences = load_sentences(tokenizer, args.n)
    n_tokens = sum(len(e.ids) - 2 for e in tokenizer.encode_batch(sentences))

    # warm-up (allocator, kernels) on both paths
    straightforward(model, tokenizer, sentences[:20])
    pipe.score(sentences[:50], batch_tokens=args.batch_tokens)
    from masklm.inference.batching import default_batch_tokens

    budget = args.batch_tokens or default_batch_tokens(device)

    approaches = {
        "straightforward": lambda chunk: straightforward(model, tokenizer, chunk),
        "masklm": lambda chunk: pipe.score(chunk, metric="pll", batch_tokens=args.batch_tokens),
    }
    if not args.skip_attribution:
        approaches["sparse_head_per_sentence"] = lambda chunk: straightforward(model, tokenizer, chunk, True)
    with tempfile.TemporaryDirectory() as tmp:
        mlm = minicons_scorer(model, tokenizer, Path(tmp), device)
        if mlm is not None:
            minicons_scores(mlm, sentences[:20], args.minicons_batch)  # warm-up
            approaches["minicons"] = lambda chunk: minicons_scores(mlm, chunk, args.minicons_batch)
        scores, seconds = run_rounds(approaches, sentences, args.rounds, device)
    n = len(sentences)
    result = {
        "benchmark": "pll_score_speed",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "load_average_1min": _load_average(),
        "model": (f"bert {args.size}: hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
                  f"{config.num_attention_heads} heads, ffn {config.intermediate_size}, vocab 8192 (untrained)"),
        "sentences": n, "scored_tokens": n_tokens, "batch_tokens": budget, "rounds": args.rounds,
        "straightforward_sentences_per_s": round(n / seconds["straightforward"], 2),
        "masklm_sentences_per_s": round(n / seconds["masklm"], 2),
        "speedup": round(seconds["straightforward"] / seconds["masklm"], 2),
        "max_abs_score_diff": max(abs(a - b) for a, b in zip(scores["straightforward"], scores["masklm"])),
    }
    if "minicons" in approaches:
        result["minicons_sentences_per_s"] = round(n / seconds["minicons"], 2)
        result["speedup_vs_minicons"] = round(seconds["minicons"] / seconds["masklm"], 2)
        result["max_abs_score_diff_minicons"] = max(
            abs(a - b) for a, b in zip(scores["minicons"], scores["masklm"]))
    if not args.skip_attribution:
        result["sparse_head_per_sentence_sentences_per_s"] = round(n / seconds["sparse_head_per_sentence"], 2)
        result["max_abs_score_diff_sparse"] = max(
            abs(a - b) for a, b in zip(scores["straightforward"], scores["sparse_head_per_sentence"]))
    assert result["max_abs_score_diff"] < 1e-3, result
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
