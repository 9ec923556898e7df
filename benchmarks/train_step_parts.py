"""Where a `masklm train` step goes: batch assembly, forward, loss, backward, update, the rest.

The end-to-end benchmark (`train_e2e.py`) says how fast the real path is against Hugging Face `Trainer`;
this one says which part of the step a speed-up has to come from. It sets up the trainer exactly as
`masklm train` does (same config fields, same tokenizer training, same data packing), then times each
part of `Trainer.train_step` with a wall clock around the methods that do it:

- batches:  `Trainer._micro_batches` (rows from the shards, the objective's masking, to the device);
- forward:  the model's forward (`Trainer.step_model`), under autocast;
- loss:     `objectives.objective_loss` on the sparse logits;
- backward: `MixedPrecision.backward`;
- update:   `Trainer._update` (unscale, clip, the non-finite check's one sync, the fused AdamW step);
- other:    the rest of `train_step` (learning-rate and mask-rate schedules, the count all-reduce).

With ``--profile``, one more round runs under ``torch.profiler`` and the summary adds ``matmul``: the
device time per step in matrix products (``aten::mm``, ``addmm``, ``bmm``, ``baddbmm``: their self time on a
CPU, where their kernels run inside them; on CUDA the time of the kernels they launch), the floating-point
operations they did (one more step under ``FlopCounterMode``) and their rate, and the rest of the step. That is the floor a faster step cannot go below without doing fewer or
cheaper products: the end-to-end goal against HF ``Trainer`` (``train_e2e.py``) asks for a step of
``HF's seconds per step / goal``, which is reachable only while it is above this floor.

On a CUDA device each part ends with a synchronize, so the parts add up to the step (the synchronizes
make the step a little slower than in `masklm train`). Rounds of `--steps` steps each; one JSON line per
round (ms per step of each part; the process's minor page faults and system-time ms per step, which show
whether host memory is reused from step to step, see ``masklm.host_memory``; the load average), then a
summary line with the medians and each part's share of the step.

    python benchmarks/train_step_parts.py                       # BERT small, 32x128, CPU, 3 rounds
    python benchmarks/train_step_parts.py --size base --device cuda --precision bf16
    python benchmarks/train_step_parts.py --rounds 5 --profile      # + matrix products vs the rest
    python benchmarks/train_step_parts.py --compile --warmup 8      # the forward through torch.compile
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

PARTS = ("batches", "forward", "loss", "backward", "update")
MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="bert")
    p.add_argument("--size", default="small")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--corpus", nargs="+", default=["kjv"])
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--compile", action="store_true", help="the training forward through torch.compile, as "
                   "`masklm train --compile` (compiles during the warm-up steps: give --warmup 8 or more)")
    p.add_argument("--profile", action="store_true",
                   help="one more round under torch.profiler: matrix products against the rest of the step")
    return p.parse_args(argv)


def matmul_share(train_step, first_step: int, steps: int, device: torch.device) -> dict:
    """Run ``steps`` steps under ``torch.profiler`` (no shapes recorded: it stays close to the real step), then
    one under ``FlopCounterMode`` -> per step: ms in matrix products, their GFLOP and GFLOP/s, and the ms
    of everything else (profiled wall time minus products)."""
    from torch.profiler import ProfilerActivity, profile  # lazy: only with --profile
    from torch.utils.flop_counter import FlopCounterMode  # lazy: only with --profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for step in range(first_step, first_step + steps):
            train_step(step)
        if device.type == "cuda":
            torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t0) * 1000 / steps
    rows = [e for e in prof.key_averages() if e.key in MATMULS]
    if device.type == "cuda":
        matmul_ms = sum(e.device_time_total for e in rows) / 1000 / steps  # their kernels
    else:
        matmul_ms = sum(e.self_cpu_time_total for e in rows) / 1000 / steps
    counter = FlopCounterMode(display=False)
    with counter:
        train_step(first_step + steps)
    ops = counter.get_flop_counts().get("Global", {})
    gflop = sum(n for op, n in ops.items() if str(op).split(".")[-1] in {"mm", "addmm", "bmm", "baddbmm"}) / 1e9
    return {"profiled_step_ms": round(wall_ms, 1), "matmul_ms": round(matmul_ms, 1), "matmul_gflop": round(gflop, 2),
            "matmul_gflops_per_s": round(gflop / matmul_ms * 1000, 1) if matmul_ms else None,
            "rest_ms": round(wall_ms - matmul_ms, 1), "matmul_share": round(matmul_ms / wall_ms, 3)}


class PartClock:
    """Wall-clock seconds spent in wrapped callables, by part name."""

    def __init__(self, device: torch.device) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cuda = device.type == "cuda"

    def wrap(self, owner: object, attr: str, part: str) -> None:
        inner = getattr(owner, attr)

        def timed(*a, **k):
            t0 = time.perf_counter()
            out = inner(*a, **k)
            if self.cuda:
                torch.cuda.synchronize()
            self.seconds[part] += time.perf_counter() - t0
            return out

        setattr(owner, attr, timed)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from masklm.models import cpu_kernels
    from masklm.training import trainer as trainer_module
    from masklm.training.config import TrainConfig
    from masklm.training.distributed import setup

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(arch=args.arch, size=args.size, corpus=args.corpus, out=str(Path(tmp) / "run"),
                          vocab_size=args.vocab_size, seq_len=args.seq_len, batch_size=args.batch_size,
                          precision=args.precision, device=args.device, progress=False, compile=args.compile,
                          max_steps=args.warmup + (args.rounds + 1) * args.steps + 2)
        info = setup(cfg.device)
        trainer = trainer_module.Trainer(cfg, info, lambda _m: None)
        trainer.setup()
        trainer._setup_speed()  # what Trainer.run does before its loop
        clock = PartClock(info.device)
        clock.wrap(trainer, "_micro_batches", "batches")
        clock.wrap(trainer, "step_model", "forward")
        clock.wrap(trainer_module, "objective_loss", "loss")
        clock.wrap(trainer.amp, "backward", "backward")
        clock.wrap(trainer, "_update", "update")
        step = 0
        for _ in range(args.warmup):
            step += 1
            trainer.train_step(step)
        rows = []
        for r in range(args.rounds):
            clock.seconds.clear()
            usage = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step += 1
                trainer.train_step(step)
            total = (time.perf_counter() - t0) / args.steps * 1000
            after = resource.getrusage(resource.RUSAGE_SELF)
            row = {"round": r, "step_ms": round(total, 1)}
            row.update({part: round(clock.seconds[part] / args.steps * 1000, 1) for part in PARTS})
            row["other"] = round(total - sum(row[part] for part in PARTS), 1)
            row["minor_faults"] = round((after.ru_minflt - usage.ru_minflt) / args.steps)
            row["system_ms"] = round((after.ru_stime - usage.ru_stime) / args.steps * 1000, 1)
            row["load_average"] = [round(x, 2) for x in os.getloadavg()]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
        profiled = matmul_share(trainer.train_step, step + 1, args.steps, info.device) if args.profile else None
    median = {key: statistics.median(row[key] for row in rows) for key in ("step_ms", *PARTS, "other")}
    share = {key: round(median[key] / median["step_ms"], 3) for key in (*PARTS, "other")}
    print(json.dumps({"summary": True, "arch": args.arch, "size": args.size, "batch": args.batch_size,
                      "seq_len": args.seq_len, "precision": args.precision, "device": args.device,
                      "compile": args.compile, "cpu_kernels": cpu_kernels.unavailable() or "available",
                      "torch": torch.__version__, "median_ms": median, "share": share,
                      **({"matmul": profiled} if profiled else {})}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
