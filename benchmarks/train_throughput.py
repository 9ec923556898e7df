"""Training throughput: masklm's BERT against transformers' BertForMaskedLM, same config, same process.

One training step = forward + backward + AdamW step, on the same batch and the same masks for both;
each side uses its own trainer's optimizer, which for both is fused AdamW.
The two models start from the same weights and run in alternating rounds (the order flips every round),
so drift in machine load hits both alike. Prints one JSON object with tokens/s for each (median over
rounds) and the ratio (median over rounds of the per-round ratio masklm / HF).

    python benchmarks/train_throughput.py                      # default: ~2-3 minutes on 2 CPU cores
    python benchmarks/train_throughput.py --steps 2 --rounds 2 # quick look
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch


def make_batch(batch_size: int, seq_len: int, vocab_size: int, rate: float, seed: int) -> dict[str, torch.Tensor]:
    """Random ids, 15% of positions chosen; 80% [MASK] (id 4), 10% random, 10% kept (BERT's recipe)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab_size, (batch_size, seq_len), generator=g)
    chosen = torch.rand(batch_size, seq_len, generator=g) < rate
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    roll = torch.rand(batch_size, seq_len, generator=g)
    inputs = ids.clone()
    inputs[chosen & (roll < 0.8)] = 4
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[swap] = torch.randint(5, vocab_size, (int(swap.sum()),), generator=g)
    return {"input_ids": inputs, "attention_mask": torch.ones_like(ids), "labels": labels}


def build_models(args: argparse.Namespace):
    from transformers import BertConfig, BertForMaskedLM

    from masklm.config import ModelConfig
    from masklm.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, intermediate_size=args.intermediate_size,
    )
    ours = build_model(cfg).train()
    hf_cfg = BertConfig(**{k: v for k, v in cfg.to_dict().items() if k != "arch"}, attn_implementation="sdpa")
    hf = BertForMaskedLM(hf_cfg).train()
    assert hf.config._attn_implementation == "sdpa", hf.config._attn_implementation
    hf.load_state_dict(ours.state_dict(), strict=False)  # decoder weight/bias are tied aliases in HF
    return cfg, ours, hf


def make_step(model, batch, hf: bool, compile_model: bool):
    # Each side gets its own trainer's optimizer: masklm's build_optimizer, and Hugging Face Trainer's
    # default "adamw_torch_fused" (both fused AdamW; the same maths and cost).
    if hf:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)
    else:
        from masklm.training.optim import build_optimizer

        opt = build_optimizer(model, lr=1e-4, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8)
    fwd = torch.compile(model) if compile_model else model

    def step() -> float:
        out = fwd(**batch)
        loss = out.loss if not hf else out["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def timed(step, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps per model per round")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--vocab-size", type=int, default=16384)
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate-size", type=int, default=1024)
    p.add_argument("--mask-rate", type=float, default=0.15)
    p.add_argument("--compile", action="store_true", help="torch.compile masklm's model (slow warm-up)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers

    cfg, ours, hf = build_models(args)
    batch = make_batch(args.batch_size, args.seq_len, cfg.vocab_size, args.mask_rate, seed=0)
    steps = {
        "masklm": make_step(ours, batch, hf=False, compile_model=args.compile),
        "hf": make_step(hf, batch, hf=True, compile_model=False),
    }
    for name, step in steps.items():
        for _ in range(args.warmup):
            step()
        print(f"warmed up {name}", file=sys.stderr)

    tokens = args.batch_size * args.seq_len * args.steps
    rates: dict[str, list[float]] = {"masklm": [], "hf": []}
    for r in range(args.rounds):
        order = ["masklm", "hf"] if r % 2 == 0 else ["hf", "masklm"]
        for name in order:
            rates[name].append(tokens / timed(steps[name], args.steps))
        print(f"round {r + 1}: masklm {rates['masklm'][-1]:.0f} tok/s, hf {rates['hf'][-1]:.0f} tok/s",
              file=sys.stderr)

    ours_tps, hf_tps = statistics.median(rates["masklm"]), statistics.median(rates["hf"])
    # each round's two runs are adjacent in time, so their ratio is the least disturbed by machine load
    paired = [a / b for a, b in zip(rates["masklm"], rates["hf"])]
    result = {
        "benchmark": "train_throughput",
        "config": {"hidden_size": cfg.hidden_size, "layers": cfg.num_hidden_layers, "heads": cfg.num_attention_heads,
                   "intermediate_size": cfg.intermediate_size, "vocab_size": cfg.vocab_size,
                   "batch_size": args.batch_size, "seq_len": args.seq_len, "mask_rate": args.mask_rate,
                   "masked_tokens": int((batch["labels"] != -100).sum()), "dropout": cfg.hidden_dropout_prob},
        "steps_per_round": args.steps, "rounds": args.rounds, "warmup": args.warmup, "compile": args.compile,
        "masklm_tokens_per_s": round(ours_tps, 1),
        "hf_tokens_per_s": round(hf_tps, 1),
        "ratio": round(statistics.median(paired), 3),
        "ratio_of_medians": round(ours_tps / hf_tps, 3),
        "ratio_rounds": [round(x, 3) for x in paired],
        "masklm_rounds": [round(x, 1) for x in rates["masklm"]],
        "hf_rounds": [round(x, 1) for x in rates["hf"]],
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "transformers": transformers.__version__},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
