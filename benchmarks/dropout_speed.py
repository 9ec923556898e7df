"""CPU dropout: masklm's ``models.attention.dropout`` against ``torch.nn.functional.dropout``, same process.

Dropout runs 13 times in each training step of BERT small (embeddings, and per layer the attention
probabilities and both sublayer outputs); on a CPU its random numbers are the slow part. This times, at the
shapes of that step (32 x 128, hidden 256, 4 heads; FFN 1024 for scale), in alternating rounds:

- ``torch``: ``F.dropout(x, 0.1, training=True)``, what a model written against torch calls;
- ``masklm``: ``dropout(x, 0.1, True)`` (16-bit draws from numpy's SFC64, seeded from torch's generator);
- the bits alone, the same count of 64-bit numbers from torch's generator (``torch.randint`` over the
  int64 range) and from ``np.random.SFC64(seed).random_raw``: why masklm draws them with numpy.

Run it as ``masklm train`` runs: with freed memory kept in the process (``host_memory``, on by default
here; ``--default-malloc`` leaves glibc's defaults, where fresh buffers are faulted in again each call).
One JSON line per round (ms per call for each shape and approach, the load average), then a summary with
the medians and the ratios torch / masklm.

    python benchmarks/dropout_speed.py                 # 5 rounds
    python benchmarks/dropout_speed.py --default-malloc
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from masklm.host_memory import keep_freed_memory
from masklm.models.attention import dropout

SHAPES = {"hidden": (32, 128, 256), "probs": (32, 4, 128, 128), "ffn": (32, 128, 1024)}


def per_call_ms(fn, calls: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1000


def approaches(x: torch.Tensor) -> dict:
    words = (x.numel() + 3) // 4  # 64-bit numbers for 16 bits per element
    return {
        "torch": lambda: F.dropout(x, 0.1, training=True),
        "masklm": lambda: dropout(x, 0.1, True),
        "bits_torch": lambda: torch.randint(-(2**63), 2**63 - 1, (words,), dtype=torch.int64),
        "bits_sfc64": lambda: np.random.SFC64(int(torch.randint(0, 2**62, ()))).random_raw(words),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=30, help="calls per approach, shape and round")
    p.add_argument("--default-malloc", action="store_true", help="leave glibc's malloc options as they are")
    args = p.parse_args(argv)
    kept = False if args.default_malloc else keep_freed_memory()
    inputs = {name: torch.randn(shape) for name, shape in SHAPES.items()}
    rows = []
    for r in range(args.rounds):
        row = {"round": r, "ms": {}}
        for name, x in inputs.items():
            fns = list(approaches(x).items())
            order = fns if r % 2 == 0 else fns[::-1]  # alternate which approach runs first
            row["ms"][name] = {k: round(per_call_ms(fn, args.calls), 3) for k, fn in order}
        row["load_average"] = [round(v, 2) for v in os.getloadavg()]
        rows.append(row)
        print(json.dumps(row), flush=True)
    median = {name: {k: round(statistics.median(row["ms"][name][k] for row in rows), 3)
                     for k in rows[0]["ms"][name]} for name in SHAPES}
    ratio = {name: {"torch/masklm": round(m["torch"] / m["masklm"], 2),
                    "bits torch/sfc64": round(m["bits_torch"] / m["bits_sfc64"], 2)} for name, m in median.items()}
    print(json.dumps({"summary": True, "shapes": SHAPES, "freed_memory_kept": kept, "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "median_ms": median, "ratio": ratio}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
