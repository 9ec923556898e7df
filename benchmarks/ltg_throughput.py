"""LTG-BERT training throughput on CPU, with the share of the step spent in attention.

For each size (xs and small at vocabulary 16384, batch x 128 tokens, 15% masked) one training step is
forward + backward + AdamW step. The anchor is Hugging Face's ``BertForMaskedLM`` (sdpa) of the same
width, depth, heads and vocabulary, timed in the same process in alternating rounds, so the ratio shows
what LTG-BERT's disentangled attention and GEGLU cost against plain BERT. The attention share is wall
time between hooks around every attention module, forward and backward (CPU ops run synchronously, so
the intervals add up), over the whole step time. Prints one JSON object.

    python benchmarks/ltg_throughput.py                    # xs and small, batch 16, ~3-5 minutes on 2 cores
    python benchmarks/ltg_throughput.py --sizes xs --rounds 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from masklm.config import ModelConfig
from masklm.models import build_model


class AttentionTimer:
    """Sums wall time inside every module of ``kind``, forward and backward."""

    def __init__(self, model: torch.nn.Module, kind: type) -> None:
        self.seconds = 0.0
        self._start: dict[int, float] = {}
        for module in model.modules():
            if isinstance(module, kind):
                module.register_forward_pre_hook(self._begin)
                module.register_forward_hook(self._end)
                module.register_full_backward_pre_hook(self._begin_backward)
                module.register_full_backward_hook(self._end_backward)

    def _begin(self, module, *_):
        self._start[id(module)] = time.perf_counter()

    def _end(self, module, *_):
        self.seconds += time.perf_counter() - self._start.pop(id(module))

    def _begin_backward(self, module, *_):
        self._begin(module)

    def _end_backward(self, module, *_):
        self._end(module)


def batch(batch_size: int, seq_len: int, vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab_size, (batch_size, seq_len), generator=g)
    chosen = torch.rand(batch_size, seq_len, generator=g) < 0.15
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    return {"input_ids": torch.where(chosen, torch.full_like(ids, 4), ids), "labels": labels}


def timed_steps(model, data, steps: int, timer: AttentionTimer | None = None) -> tuple[float, float]:
    """(seconds per step, attention seconds per step) over ``steps`` steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    if timer is not None:
        timer.seconds = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        model(**data).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    elapsed = (time.perf_counter() - start) / steps
    return elapsed, (timer.seconds / steps if timer else 0.0)


def run_size(size: str, args: argparse.Namespace) -> dict:
    from transformers import BertConfig, BertForMaskedLM

    from masklm.models.ltg_bert import Attention

    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("ltg-bert", size, vocab_size=args.vocab_size)
    ltg = build_model(cfg).train()
    timer = AttentionTimer(ltg, Attention)
    bert = BertForMaskedLM(BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=4 * cfg.hidden_size,
        attn_implementation="sdpa")).train()
    data = batch(args.batch_size, args.seq_len, args.vocab_size)
    tokens = args.batch_size * args.seq_len
    timed_steps(ltg, data, 1)
    timed_steps(bert, data, 1)
    ltg_s, bert_s, attn_share = [], [], []
    for r in range(args.rounds):
        pair = [(ltg, timer), (bert, None)] if r % 2 == 0 else [(bert, None), (ltg, timer)]
        for model, t in pair:
            step, attn = timed_steps(model, data, args.steps, t)
            if model is ltg:
                ltg_s.append(step)
                attn_share.append(attn / step)
            else:
                bert_s.append(step)
    return {
        "size": size, "params": sum(p.numel() for p in ltg.parameters()),
        "ltg_tokens_per_s": round(tokens / statistics.median(ltg_s), 1),
        "hf_bert_tokens_per_s": round(tokens / statistics.median(bert_s), 1),
        "ratio_ltg_over_hf_bert": round(statistics.median(b / a for a, b in zip(ltg_s, bert_s)), 3),
        "attention_share": round(statistics.median(attn_share), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["xs", "small"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--vocab-size", type=int, default=16384)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [run_size(size, args) for size in args.sizes]
    print(json.dumps({"results": results, "batch": [args.batch_size, args.seq_len],
                      "machine": {"threads": torch.get_num_threads(), "torch": torch.__version__,
                                  "cpu": platform.processor() or platform.machine()}}, indent=2))


if __name__ == "__main__":
    main()
