"""Data-pipeline speed: a packed batch from memory-mapped shards, whole-word masking, span masking.

These three speed claims were wall-clock thresholds inside the tests (``tests/test_packing.py``,
``tests/test_masking.py``, ``tests/test_span_masking.py``), which fail on a slower or busier machine for
no fault of the code; here they are measured in rounds, with the machine's load beside the figures:

- ``PackedRows.batch``: 32 random rows of 128 tokens from the shards of a small synthetic corpus (420
  documents of 5-40 words, a 60-piece WordPiece, rows over the first 400 documents). Claim: < 5 ms.
- ``mask_tokens(strategy="whole-word")``: 32 x 128 ids (vocabulary 1000, words of 1-4 pieces, padding
  at the end of every third row). Claim: < 10 ms.
- ``mask_tokens(strategy="span")``: 32 x 128 packed-style rows ([CLS] ... [SEP] [CLS] ...). Claim: < 20 ms.

Every round times ``--batches`` calls of each operation, in an order that rotates from round to round
(drift in machine load hits all three alike); each masking call gets fresh row numbers, as in training.
The JSON gives ms per batch for every round, the median over rounds, the claim, and ``os.getloadavg()``
before and after (other processes on the machine distort CPU timings).

    python benchmarks/data_speed.py                        # 7 rounds x 20 batches, a few seconds
    python benchmarks/data_speed.py --rounds 15 --batches 50 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

B, T = 32, 128
V, PAD, CLS, SEP, MASK = 1000, 0, 2, 3, 4
SPECIALS = [PAD, 1, CLS, SEP, MASK]
WORDS = ("the of and unbelievable extraordinary counterproductive hello world river mountain "
         "quickly wandering shepherds lantern whispering").split()


def packed_rows(folder: Path):
    """PackedRows of 128 tokens over 400 documents of a synthetic corpus tokenized into shards there."""
    from masklm.data.packing import PackedRows
    from masklm.data.shards import ShardedCorpus, prepare_shards
    from masklm.tokenizer import train_tokenizer

    rng = random.Random(0)
    documents = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) + "." for _ in range(420)]
    tokenizer = train_tokenizer(documents, kind="wordpiece", vocab_size=60, min_frequency=1)
    (folder / "c.txt").write_text("\n\n".join(documents))
    prepare_shards([str(folder / "c.txt")], tokenizer, folder / "shards", num_workers=1, log=lambda m: None)
    return PackedRows(ShardedCorpus(folder / "shards"), np.arange(400), T, tokenizer.pad_id)


def masking_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids ``[B, T]``, attention ``[B, T]`` and word starts ``[B, T]``: two segments per row
    ([CLS] ... [SEP] [CLS] ...), words of 1-4 pieces, padding at the end of every third row."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, V, (B, T))
    starts = rng.random((B, T)) < 0.4  # a word starts at ~40% of the pieces: 2.5 pieces a word
    ids[:, 0], ids[:, T // 2], ids[:, T // 2 + 1] = CLS, SEP, CLS
    starts[:, [0, T // 2, T // 2 + 1]] = False
    starts[:, [1, T // 2 + 2]] = True  # a special token ends a word
    attention = np.ones((B, T), dtype=np.int64)
    for b in range(0, B, 3):
        cut = int(rng.integers(T // 2 + 4, T))
        attention[b, cut:], ids[b, cut:], starts[b, cut:] = 0, PAD, False
    return torch.from_numpy(ids), torch.from_numpy(attention), torch.from_numpy(starts)


def operations(folder: Path) -> dict:
    """name -> (claim in ms, a function of the call number that runs the operation once)."""
    from masklm.data.masking import mask_tokens

    packed = packed_rows(folder)
    picks = np.random.default_rng(0)
    ids, attention, starts = masking_batch()
    common = {"seed": 1, "epoch": 0, "mask_id": MASK, "vocab_size": V, "special_ids": SPECIALS,
              "attention_mask": attention}

    def mask(strategy: str, step: int) -> None:
        mask_tokens(ids, rows=list(range(step * B, (step + 1) * B)), strategy=strategy,
                    word_starts=starts if strategy == "whole-word" else None, **common)

    return {
        "packed_batch": (5.0, lambda step: packed.batch(picks.integers(0, len(packed), B))),
        "whole_word_masking": (10.0, lambda step: mask("whole-word", step)),
        "span_masking": (20.0, lambda step: mask("span", step)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds (default 7)")
    ap.add_argument("--batches", type=int, default=20, help="calls of each operation per round (default 20)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        ops = operations(Path(tmp))
        for _, fn in ops.values():  # warm-up: page cache, allocator
            fn(10**6)
        rounds: dict[str, list[float]] = {name: [] for name in ops}
        step = 0
        for r in range(args.rounds):
            names = list(ops)
            for name in names[r % len(names):] + names[:r % len(names)]:
                fn = ops[name][1]
                t0 = time.perf_counter()
                for _ in range(args.batches):
                    fn(step)
                    step += 1
                rounds[name].append(round((time.perf_counter() - t0) / args.batches * 1000, 3))
    result = {
        "benchmark": "data_speed",
        "device": platform.processor() or "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "batch": f"{B}x{T}", "rounds": args.rounds, "batches_per_round": args.batches,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "operations": {name: {"claim_ms_per_batch": ops[name][0], "ms_per_batch_rounds": rounds[name],
                              "median_ms_per_batch": statistics.median(rounds[name])} for name in ops},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
