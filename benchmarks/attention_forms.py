"""Packed attention forms: dense mask, per-row split and FlexAttention block mask, same rows, same maths.

Rows of ``--seq-len`` tokens hold several documents each (lengths drawn at random, ``--docs`` per row on
average), as the packer lays them out. For each exact document form of ``models.attention`` (``dense``: a
``[B, 1, T, T]`` mask; ``split``: every document run attends as its own sequence; ``flex``: a FlexAttention
block mask, compiled on CUDA, eager and forward-only on the CPU) it times:

- ``core``: building the form once (the mask, the runs on the host, or the block mask) plus ``--layers``
  calls of ``attend`` on ``[B, H, T, d]`` queries, keys and values, forward, and backward unless
  ``--forward-only`` (the CPU cannot backpropagate through FlexAttention: flex is then forward-only there);
- ``model``: a BERT forward and backward (forward only for flex on the CPU) with ``document_ids``,
  the form forced through ``models.attention.DOCUMENT_FORMS``.

``none`` (no mask at all: what rows of one document get) is timed beside them as the floor. The forms
run in an order that rotates per round; each round prints one JSON line (milliseconds per form, the ratio
of each to ``dense``, the load average); the summary takes the median over rounds. The CPU default in
``DOCUMENT_FORMS["cpu"]`` is the one to flip if these figures, taken on a quiet machine, say so.

    python benchmarks/attention_forms.py                              # CPU, 16 x 512, 4 docs per row
    python benchmarks/attention_forms.py --batch 2 --seq-len 64 --rounds 1 --iters 1   # quick check
    python benchmarks/attention_forms.py --device cuda --batch 32 --seq-len 1024 --out forms.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import masklm.models.attention as attention
from masklm.config import ModelConfig
from masklm.models import build_model


def document_ids(batch: int, seq_len: int, docs: float, seed: int = 0) -> torch.Tensor:
    """``[B, T]`` ids 0, 1, ... per row: cut points drawn uniformly, ``docs`` documents per row on average."""
    g = torch.Generator().manual_seed(seed)
    cuts = torch.rand(batch, seq_len, generator=g) < (docs - 1) / max(seq_len - 1, 1)
    cuts[:, 0] = False
    return cuts.long().cumsum(1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _forms(device: torch.device) -> list[str]:
    forms = ["none", "dense", "split"]
    try:
        import torch.nn.attention.flex_attention  # noqa: F401  # lazy: optional in older torch
        forms.append("flex")
    except ImportError:
        print(json.dumps({"note": "FlexAttention is not in this torch: flex skipped"}))
    return forms


def core_once(form: str, q, k, v, docs, args) -> None:
    """Build the form and run ``--layers`` attention calls (and their backward)."""
    if form == "none":
        attn = attention.AttentionMask()
    else:
        attn = attention.build_attention_mask(None, docs, args.causal, forms=(form,) if form != "dense" else ())
    backward = not args.forward_only and not (form == "flex" and q.device.type == "cpu")
    if not backward:
        q, k, v = q.detach(), k.detach(), v.detach()
    with torch.set_grad_enabled(backward):
        outs = [attention.attend(q, k, v, attn) for _ in range(args.layers)]
        if backward:
            torch.stack(outs).sum().backward()


def model_once(form: str, model, ids, docs, args) -> None:
    backward = not args.forward_only and not (form == "flex" and ids.device.type == "cpu")
    available = attention.flex_available
    if form == "flex":  # asked for by name: also where the library would not pick it (the CPU)
        attention.flex_available = lambda: True
    try:
        _model_step(form, model, ids, docs, args, backward)
    finally:
        attention.flex_available = available


def _model_step(form: str, model, ids, docs, args, backward: bool) -> None:
    with torch.set_grad_enabled(backward):
        if form == "none":
            hidden = model.encode(ids, causal=args.causal)
        else:
            attention.DOCUMENT_FORMS[ids.device.type] = (form, "dense") if form != "dense" else ("dense",)
            hidden = model.encode(ids, causal=args.causal, document_ids=docs)
        if backward:
            hidden.float().pow(2).mean().backward()
            model.zero_grad(set_to_none=True)


def timed(fn, iters: int, device: torch.device) -> float:
    """Milliseconds per call, the mean of ``iters`` calls."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return 1000 * (time.perf_counter() - t0) / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--docs", type=float, default=4.0, help="documents per row on average (default 4)")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4, help="attention calls per form build (default 4)")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--forward-only", action="store_true")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--levels", nargs="+", default=["core", "model"], choices=["core", "model"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", help="also write the summary JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cuda":
        attention.flex_available.cache_clear()
    docs = document_ids(args.batch, args.seq_len, args.docs).to(device)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(args.batch, args.heads, args.seq_len, args.head_dim, generator=g)
               .to(device, dtype).requires_grad_() for _ in range(3))
    hidden = args.heads * args.head_dim
    model = build_model(ModelConfig(arch="bert", vocab_size=8192, hidden_size=hidden, num_hidden_layers=args.layers,
                                    num_attention_heads=args.heads, intermediate_size=4 * hidden,
                                    max_position_embeddings=max(512, args.seq_len),
                                    attention_probs_dropout_prob=0.0)).to(device, dtype).train()
    ids = torch.randint(5, 8192, (args.batch, args.seq_len), generator=g).to(device)
    saved = dict(attention.DOCUMENT_FORMS)
    runs = {}
    for form in _forms(device):
        if "core" in args.levels:
            runs[f"core/{form}"] = lambda form=form: core_once(form, q, k, v, docs, args)
        if "model" in args.levels:
            runs[f"model/{form}"] = lambda form=form: model_once(form, model, ids, docs, args)
    try:
        for fn in runs.values():  # warm-up (and FlexAttention's compilation on CUDA)
            fn()
        per_round = {name: [] for name in runs}
        for r in range(args.rounds):
            names = list(runs)[r % len(runs):] + list(runs)[:r % len(runs)]
            ms = {name: round(timed(runs[name], args.iters, device), 3) for name in names}
            for name, value in ms.items():
                per_round[name].append(value)
            print(json.dumps({"round": r + 1, "ms": ms, "ratio_to_dense": _ratios(ms),
                              "load_average_1min": os.getloadavg()[0]}), flush=True)
    finally:
        attention.DOCUMENT_FORMS.clear()
        attention.DOCUMENT_FORMS.update(saved)
    median = {name: round(statistics.median(values), 3) for name, values in per_round.items()}
    result = {"benchmark": "attention_forms", "device": args.device, "dtype": args.dtype,
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "shape": {"batch": args.batch, "seq_len": args.seq_len, "heads": args.heads,
                        "head_dim": args.head_dim, "layers": args.layers},
              "documents_per_row": round(float(docs.amax(1).float().mean() + 1), 2), "causal": args.causal,
              "median_ms": median, "ratio_to_dense": _ratios(median),
              "cpu_default": list(saved.get("cpu", ())), "load_average_1min": os.getloadavg()[0]}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


def _ratios(ms: dict[str, float]) -> dict[str, float]:
    """Each form's time over dense's at the same level (below 1: faster than the dense mask)."""
    out = {}
    for name, value in ms.items():
        level, form = name.split("/")
        dense = ms.get(f"{level}/dense")
        if form != "dense" and dense:
            out[name] = round(value / dense, 3)
    return out


if __name__ == "__main__":
    main()
