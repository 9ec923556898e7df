"""GPT-BERT training steps on a CPU: today's path against the two spellings it replaced, in one process.

- DWA (depth-weighted averaging): ``models.dwa.DepthMix`` (the states in one buffer, one matrix-vector
  product a block) against the autograd sums (``mix_states``, a multiply and an add a term);
- attention with dropout: ``attention.attend_with_bias`` (the explicit maths with masklm's dropout) against
  ``F.scaled_dot_product_attention``, whose CPU fallback draws the dropout mask with ``bernoulli_``.

One ``Trainer`` (``masklm train``'s own, GPT-BERT ``mntp=3,clm=1`` on the built-in corpus, 32 x 128 rows)
runs every config in alternating rounds (the order flips each round), so drift on a shared machine hits all
alike; each round prints one JSON line with the load average, the last line the medians and each config's
step time over today's path's.

    python benchmarks/gpt_bert_step.py                     # tiny (the demo's size) and small, 3 rounds
    python benchmarks/gpt_bert_step.py --sizes small --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from masklm.models import ltg_bert
from masklm.training.config import TrainConfig
from masklm.training.distributed import setup
from masklm.training.trainer import Trainer

NOW = ltg_bert.depth_mix_usable, ltg_bert.attend_with_bias


def sdpa(q, k, v, bias, dropout_p, scale):
    """What LTG-BERT's attention called before ``attend_with_bias``."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)


CONFIGS = {  # name -> (DWA rule, attention)
    "now": NOW,
    "autograd DWA": (lambda x: False, NOW[1]),
    "SDPA attention": (NOW[0], sdpa),
    "both before": (lambda x: False, sdpa),
}


def run_size(size: str, args: argparse.Namespace, tmp: str) -> dict:
    cfg = TrainConfig(arch="gpt-bert", size=size, objective="mntp=3,clm=1", corpus=["kjv"],
                      out=str(Path(tmp) / f"run-{size}"), vocab_size=args.vocab_size, seq_len=128,
                      batch_size=32, precision="fp32", device="cpu", progress=False, max_steps=100_000)
    trainer = Trainer(cfg, setup("cpu"), lambda message: None)
    trainer.setup()
    trainer._setup_speed()
    step = 0
    for _ in range(args.warmup):
        step += 1
        trainer.train_step(step)
    seconds: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for r in range(args.rounds):
        names = list(CONFIGS) if r % 2 == 0 else list(CONFIGS)[::-1]
        for name in names:
            ltg_bert.depth_mix_usable, ltg_bert.attend_with_bias = CONFIGS[name]
            step += 1
            trainer.train_step(step)  # one untimed step after each switch
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step += 1
                trainer.train_step(step)
            seconds[name].append((time.perf_counter() - t0) / args.steps)
        ltg_bert.depth_mix_usable, ltg_bert.attend_with_bias = NOW
        print(json.dumps({"size": size, "round": r, "ms_per_step": {n: round(s[-1] * 1e3, 1) for n, s in
                                                                    seconds.items()},
                          "load_average": os.getloadavg()}), flush=True)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    return {"size": size, "median_ms_per_step": {n: round(m * 1e3, 1) for n, m in median.items()},
            "over_now": {n: round(m / median["now"], 3) for n, m in median.items()}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=4, help="timed steps per config and round")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--vocab-size", type=int, default=8192)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_size(size, args, tmp) for size in args.sizes]
    print(json.dumps({"benchmark": "gpt_bert_step", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "results": results}))


if __name__ == "__main__":
    main()
