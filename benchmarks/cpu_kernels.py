"""masklm's fused CPU training kernels against the PyTorch paths they replace, in one process, alternating.

Two parts, each round printing one JSON line (milliseconds, ratios, the load average):

- ``attention``: one BERT-small attention call (batch x seq-len, 4 heads of 64, dropout 0.1) forward and
  backward from the fused QKV projection's output ``[B, T, 3, H, d]``: the fused kernel
  (``models.cpu_kernels``), masklm's explicit path (matmul, softmax, masklm's dropout, matmul), and
  ``F.scaled_dot_product_attention`` with ``dropout_p`` (what Hugging Face's BERT calls; on a CPU with
  dropout it runs the same maths with ``bernoulli_``);
- ``step``: a whole BERT-small training step (model, sparse head, masklm's loss, fused AdamW) with the
  kernels on and off (``cpu_kernels.usable`` forced False), two models built alike.

The summary line gives the medians and the median of the per-round ratios.

    python benchmarks/cpu_kernels.py                        # both parts, 10 rounds
    python benchmarks/cpu_kernels.py --part step --rounds 20
    python benchmarks/cpu_kernels.py --quick                # tiny: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from masklm.config import ModelConfig
from masklm.host_memory import keep_freed_memory
from masklm.models import cpu_kernels
from masklm.models.attention import AttentionMask, attend
from masklm.models.bert import BertForMaskedLM
from masklm.models.heads import cross_entropy_sum


def _time(fn, iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters * 1000


def attention_calls(batch: int, seq_len: int, heads: int, p: float) -> dict:
    """name -> a callable running one attention forward and backward."""
    qkv = torch.randn(batch, seq_len, 3, heads, 64, requires_grad=True)
    grad = torch.randn(batch, seq_len, heads, 64)

    def split():
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def run(out):  # out [B, T, H, d]
        out.backward(grad)
        qkv.grad = None

    return {
        "fused": lambda: run(cpu_kernels.attend_fused(qkv, None, AttentionMask(), p, 1.0)),
        "explicit": lambda: run(attend(*split(), AttentionMask(), p, scale=1.0).transpose(1, 2)),
        "sdpa": lambda: run(F.scaled_dot_product_attention(*split(), dropout_p=p, scale=1.0).transpose(1, 2)),
    }


def training_steps(batch: int, seq_len: int, size: dict) -> dict:
    """name -> a callable running one training step of its own model (kernels on / off)."""
    real = cpu_kernels.usable

    def make(use_kernels: bool):
        torch.manual_seed(0)
        model = BertForMaskedLM(ModelConfig(arch="bert", vocab_size=8192, **size)).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step():
            cpu_kernels.usable = real if use_kernels else (lambda *a, **k: False)
            ids = torch.randint(5, 8192, (batch, seq_len))
            labels = torch.where(torch.rand(batch, seq_len) < 0.15, ids, -100)
            logits = model(ids, labels=labels, return_loss=False).logits
            target = labels.reshape(-1)[labels.reshape(-1) != -100]
            (cross_entropy_sum(logits, target) / target.numel()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    return {"fused": make(True), "explicit": make(False)}


def main(argv: list[str] | None = None) -> int:
    real = cpu_kernels.usable
    try:
        return _run(argv)
    finally:
        cpu_kernels.usable = real  # the step part switches it per call


def _run(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["attention", "step", "both"], default="both")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--iters", type=int, default=4, help="calls per part and round")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.iters, args.batch, args.seq_len = 2, 1, 2, 32
    keep_freed_memory("cpu")
    why = cpu_kernels.unavailable()
    print(json.dumps({"kernel": why or "available", "threads": torch.get_num_threads(), "torch": torch.__version__}))
    if why:
        return 1
    size = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=1, intermediate_size=128) if args.quick \
        else dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
    parts = {}
    if args.part in ("attention", "both"):
        parts["attention"] = attention_calls(args.batch, args.seq_len, size["num_attention_heads"], 0.1)
    if args.part in ("step", "both"):
        parts["step"] = training_steps(args.batch, args.seq_len, size)
    for calls in parts.values():  # warm up: build, first-touch memory
        for fn in calls.values():
            for _ in range(3):
                fn()
    results = {part: {name: [] for name in calls} for part, calls in parts.items()}
    for r in range(args.rounds):
        for part, calls in parts.items():
            names = list(calls) if r % 2 == 0 else list(calls)[::-1]
            ms = {name: _time(calls[name], args.iters) for name in names}
            for name, value in ms.items():
                results[part][name].append(value)
            print(json.dumps({"round": r, "part": part, "ms": {k: round(v, 2) for k, v in ms.items()},
                              "explicit/fused": round(ms["explicit"] / ms["fused"], 3),
                              "load_average": [round(x, 2) for x in os.getloadavg()]}))
    summary = {}
    for part, by_name in results.items():
        summary[part] = {"median_ms": {k: round(statistics.median(v), 2) for k, v in by_name.items()}}
        for anchor in by_name:
            if anchor != "fused":
                summary[part][f"{anchor}/fused"] = round(statistics.median(
                    [a / f for a, f in zip(by_name[anchor], by_name["fused"])]), 3)
    print(json.dumps({"summary": summary, "batch": args.batch, "seq_len": args.seq_len,
                      "load_average": [round(x, 2) for x in os.getloadavg()]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
