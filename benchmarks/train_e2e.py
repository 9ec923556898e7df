"""End to end training throughput: `masklm train` (the CLI a user runs) against Hugging Face `Trainer`.

Both sides train the same BERT shape on the same corpus with the same tokenizer, batch and optimizer family,
each as its own process, in alternating rounds (the order flips every round), so drifting machine load hits
both alike:

- masklm: `python -m masklm train --tokenizer <prep>/tokenizer --log-every 1 ...`; tokens/s is read from
  the run's metrics.jsonl over the steps after `--warmup-steps` (start-up, data preparation, compilation
  and the first steps are not counted; the final evaluation and save come after the timed steps).
- Hugging Face: what `examples/pytorch/language-modeling/run_mlm.py` does, without the `datasets` package:
  the documents tokenized with special tokens, concatenated and cut into blocks of `--seq-len`
  ("grouped blocks"), `DataCollatorForLanguageModeling` (15%, 80/10/10), `BertForMaskedLM` with
  `attn_implementation="sdpa"` and default dropout, `Trainer` with `optim="adamw_torch_fused"`, the same
  LR, betas, eps, weight decay, warm-up share, cosine schedule and clipping as masklm's defaults;
  `--precision bf16` sets `bf16=True` (fp16: `fp16=True`), fp32 on CUDA sets `tf32=True` as masklm does;
  `--compile` sets `torch_compile=True`. The tokenizer is masklm's own, loaded from the prep run's folder
  as a `PreTrainedTokenizerFast` (tokenizer.json). Tokens/s over the steps after `--warmup-steps`, timed
  by a `TrainerCallback` at each step end (after a CUDA synchronize).

Each round prints one JSON line; the last line is the summary (medians, the median of the per-round ratios,
the load average around each round). Model FLOPs utilisation, for both sides with the same formula:
tokens/s x (6 x N + 12 x L x D x T) / peak, with N the parameters that take part in matmuls (all but the
position and token-type tables; the tied decoder counted once), L layers, D width, T tokens per row (the
attention score and value products, forward and backward: PaLM, Chowdhery et al. 2022, appendix B). Peak
from `--peak-tflops` (default on CUDA: 989, an H100/H200 SXM's dense bf16; give 494.5 for TF32 fp32).

    python benchmarks/train_e2e.py                                   # BERT small, 32x128, CPU, fp32, 3 rounds of 80 steps (30 untimed)
    python benchmarks/train_e2e.py --quick                           # a minute-scale check that it all runs
    python benchmarks/train_e2e.py --precision bf16 --rounds 5       # a CPU with AMX: both sides in bf16
    python benchmarks/train_e2e.py --device cuda --precision bf16 --size base --seq-len 512

Needs transformers and accelerate (Hugging Face Trainer) for the HF side; `--skip-hf` runs masklm alone.
Takes no figure by itself: run it on a quiet machine and quote the summary line with the command.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_SRC = Path(__file__).resolve().parents[1] / "src"
HPARAMS = dict(lr=5e-4, weight_decay=0.01, betas=(0.9, 0.98), eps=1e-6, warmup=0.06, clip=1.0)  # masklm's


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--size", default="small", help="masklm BERT size preset: tiny, small (h256 L4), base")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=80, help="optimizer steps per side per round")
    p.add_argument("--warmup-steps", type=int, default=30,
                   help="first steps not timed (default 30: on a CPU the process's heap grows to its steady size "
                        "over the first 20-30 steps, each faulting in fresh pages; a real run is thousands of "
                        "steps past that)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--corpus", nargs="+", default=["kjv"], help="corpus for both sides (default: built-in kjv)")
    p.add_argument("--compile", action="store_true", help="masklm --compile and HF torch_compile=True")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak of the device for MFU (default: 989 on CUDA, none on CPU)")
    p.add_argument("--work", help="folder for runs (default: a temporary folder, removed after); each call "
                   "puts its runs in a new runs-* folder there and reuses the tokenizer it trained first")
    p.add_argument("--json-out", help="also write the summary JSON here")
    p.add_argument("--skip-hf", action="store_true", help="run masklm only")
    p.add_argument("--quick", action="store_true", help="tiny model, vocab 2048, 16x64, 6 steps, 1 round: checks it runs")
    p.add_argument("--hf-worker", help=argparse.SUPPRESS)  # internal: run the HF side, write JSON to this file
    p.add_argument("--tokenizer", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.batch_size, args.seq_len, args.steps, args.warmup_steps, args.rounds = "tiny", 16, 64, 6, 2, 1
        args.vocab_size = 2048
    if args.steps <= args.warmup_steps:
        p.error("--steps must exceed --warmup-steps")
    if args.peak_tflops is None and args.device.startswith("cuda"):
        args.peak_tflops = 989.0
    return args


def env() -> dict[str, str]:
    """The environment for the child processes: this checkout's masklm first on the path."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO_SRC)] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    return e


def masklm_cmd(args: argparse.Namespace, out: Path, steps: int, tokenizer: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "masklm", "train", "--out", str(out), "--corpus", *args.corpus,
           "--size", args.size, "--vocab-size", str(args.vocab_size), "--seq-len", str(args.seq_len),
           "--batch-size", str(args.batch_size), "--max-steps", str(steps), "--log-every", "1",
           "--precision", args.precision, "--device", args.device, "--no-progress"]
    if tokenizer is not None:
        cmd += ["--tokenizer", str(tokenizer)]
    return cmd + (["--compile"] if args.compile else [])


def tag(args: argparse.Namespace) -> str:
    """Names the runs of one configuration, so several configurations can share a --work folder."""
    return f"{args.size}-{args.batch_size}x{args.seq_len}-{args.precision}{'-compile' if args.compile else ''}"


def run_child(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"train_e2e: {what} failed (exit {proc.returncode}): {' '.join(cmd)}")


def masklm_rate(run_dir: Path, warmup: int) -> dict[str, float]:
    """Tokens/s over the steps after ``warmup`` from metrics.jsonl (one line per step), and the last loss."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = sorted((r for r in records if "tokens_per_s" in r), key=lambda r: r["step"])
    tokens = seconds = 0.0
    for prev, rec in zip(steps, steps[1:]):
        if rec["step"] > warmup:
            done = rec["tokens"] - prev["tokens"]
            tokens, seconds = tokens + done, seconds + done / rec["tokens_per_s"]
    return {"tokens_per_s": tokens / seconds, "timed_steps": sum(r["step"] > warmup for r in steps),
            "last_loss": steps[-1]["loss"]}


def run_masklm(args: argparse.Namespace, work: Path, r: int, tokenizer: Path) -> dict[str, float]:
    out = work / f"masklm-{tag(args)}-{r}"
    run_child(masklm_cmd(args, out, args.steps, tokenizer), "masklm train")
    return masklm_rate(out, args.warmup_steps)


def run_hf(args: argparse.Namespace, work: Path, r: int, tokenizer: Path) -> dict[str, float]:
    result = work / f"hf-{tag(args)}-{r}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--hf-worker", str(result), "--tokenizer", str(tokenizer),
           "--work", str(work / f"hf-{tag(args)}-{r}"), "--device", args.device, "--precision", args.precision,
           "--size", args.size, "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
           "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps), "--corpus", *args.corpus]
    run_child(cmd + (["--compile"] if args.compile else []), "Hugging Face Trainer")
    return json.loads(result.read_text())


# ---- the Hugging Face side (runs in its own process) ------------------------------------------------

def hf_blocks(tokenizer, corpus: list[str], seq_len: int) -> list[list[int]]:
    """run_mlm's tokenize + group_texts: documents with special tokens, concatenated, cut into full blocks."""
    from masklm.data.corpus import iter_documents

    docs = list(iter_documents(corpus))
    ids: list[int] = []
    for start in range(0, len(docs), 1000):
        for row in tokenizer(docs[start:start + 1000], verbose=False)["input_ids"]:
            ids.extend(row)
    usable = len(ids) // seq_len * seq_len
    return [ids[i:i + seq_len] for i in range(0, usable, seq_len)]


def hf_config(args: argparse.Namespace, vocab_size: int):
    from transformers import BertConfig

    from masklm.config import ModelConfig

    ours = ModelConfig.from_preset("bert", args.size, vocab_size=vocab_size,
                                   max_position_embeddings=max(512, args.seq_len))
    fields = {k: v for k, v in ours.to_dict().items() if k != "arch"}
    return ours, BertConfig(**fields, attn_implementation="sdpa")


def hf_worker(args: argparse.Namespace) -> int:
    import torch
    from transformers import (
        BertForMaskedLM,
        DataCollatorForLanguageModeling,
        PreTrainedTokenizerFast,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tok = PreTrainedTokenizerFast.from_pretrained(args.tokenizer)
    blocks = hf_blocks(tok, args.corpus, args.seq_len)
    special = set(tok.all_special_ids)  # run_mlm's return_special_tokens_mask: the collator's fast path
    dataset = [{"input_ids": b, "special_tokens_mask": [int(t in special) for t in b]} for b in blocks]
    _, config = hf_config(args, len(tok))
    torch.manual_seed(0)
    model = BertForMaskedLM(config)
    cuda = args.device.startswith("cuda")
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_a, **_k):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    targs = TrainingArguments(
        output_dir=args.work, per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        learning_rate=HPARAMS["lr"], weight_decay=HPARAMS["weight_decay"],
        adam_beta1=HPARAMS["betas"][0], adam_beta2=HPARAMS["betas"][1], adam_epsilon=HPARAMS["eps"],
        max_grad_norm=HPARAMS["clip"], warmup_steps=math.ceil(HPARAMS["warmup"] * args.steps),
        lr_scheduler_type="cosine", optim="adamw_torch_fused", bf16=args.precision == "bf16",
        fp16=args.precision == "fp16", tf32=True if cuda and args.precision == "fp32" else None,
        use_cpu=not cuda, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True, seed=0,
        logging_steps=args.steps, dataloader_drop_last=True, torch_compile=args.compile,
        remove_unused_columns=False,  # keep special_tokens_mask for the collator (it pops it before the model)
    )
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
    trainer = Trainer(model=model, args=targs, train_dataset=dataset, data_collator=collator, callbacks=[Clock()])
    out = trainer.train()
    timed = args.steps - args.warmup_steps
    rate = timed * args.batch_size * args.seq_len / (times[-1] - times[args.warmup_steps - 1])
    Path(args.hf_worker).write_text(json.dumps({"tokens_per_s": rate, "timed_steps": timed,
                                                "last_loss": out.training_loss, "blocks": len(blocks)}))
    return 0


# ---- rounds and the summary -------------------------------------------------------------------------

def flops_per_token(args: argparse.Namespace, vocab_size: int) -> float:
    """6 N + 12 L D T (see the module docstring), from masklm's model built on the meta device."""
    import torch

    from masklm.config import ModelConfig
    from masklm.models import build_model

    cfg = ModelConfig.from_preset("bert", args.size, vocab_size=vocab_size,
                                  max_position_embeddings=max(512, args.seq_len))
    with torch.device("meta"):
        model = build_model(cfg)
    n = sum(p.numel() for name, p in model.named_parameters()
            if "position_embeddings" not in name and "token_type_embeddings" not in name)
    return 6.0 * n + 12.0 * cfg.num_hidden_layers * cfg.hidden_size * args.seq_len


def missing_for_hf() -> list[str]:
    return [m for m in ("transformers", "accelerate") if importlib.util.find_spec(m) is None]


def rounds(args: argparse.Namespace, work: Path, tokenizer: Path, fpt: float) -> list[dict]:
    runs = {"masklm": run_masklm} | ({} if args.skip_hf else {"hf": run_hf})
    out = []
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        row: dict = {"round": r + 1, "order": order, "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
        for name in order:
            res = runs[name](args, work, r, tokenizer)
            row[f"{name}_tokens_per_s"] = round(res["tokens_per_s"], 1)
            row[f"{name}_last_loss"] = round(res["last_loss"], 4)
            if args.peak_tflops:
                row[f"{name}_mfu"] = round(res["tokens_per_s"] * fpt / (args.peak_tflops * 1e12), 4)
        row["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        if "hf" in runs:
            row["ratio"] = round(row["masklm_tokens_per_s"] / row["hf_tokens_per_s"], 3)
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def summary(args: argparse.Namespace, rows: list[dict], fpt: float) -> dict:
    import torch

    result = {"benchmark": "train_e2e", "device": args.device, "precision": args.precision, "size": args.size,
              "vocab_size": args.vocab_size, "batch_size": args.batch_size, "seq_len": args.seq_len,
              "steps": args.steps, "warmup_steps": args.warmup_steps, "rounds": args.rounds,
              "compile": args.compile, "corpus": args.corpus, "flops_per_token": fpt,
              "peak_tflops": args.peak_tflops}
    for side in ("masklm", "hf"):
        rates = [row[f"{side}_tokens_per_s"] for row in rows if f"{side}_tokens_per_s" in row]
        if rates:
            result[f"{side}_tokens_per_s"] = round(statistics.median(rates), 1)
            if args.peak_tflops:
                result[f"{side}_mfu"] = round(statistics.median(rates) * fpt / (args.peak_tflops * 1e12), 4)
    if rows and "ratio" in rows[0]:
        result["ratio"] = round(statistics.median(row["ratio"] for row in rows), 3)
        result["ratio_rounds"] = [row["ratio"] for row in rows]
    result["loadavg"] = [row["loadavg_before"] + row["loadavg_after"] for row in rows]
    versions = {"torch": torch.__version__}
    if importlib.util.find_spec("transformers"):
        import transformers

        versions["transformers"] = transformers.__version__
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") and torch.cuda.is_available() else None
    result["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "gpu": gpu,
                         **versions}
    if args.device == "cpu":
        from masklm.models import cpu_kernels
        from masklm.training.precision import cpu_bf16_matmul

        if args.precision in ("fp32", "bf16"):  # masklm's side used its fused CPU kernels (bf16: their bf16 forms)
            result["machine"]["masklm_cpu_kernels"] = cpu_kernels.unavailable() or "used"
        # AMX makes bf16 matmuls several times faster than fp32; without it bf16 is the slower side
        result["machine"]["cpu_bf16_matmul"] = cpu_bf16_matmul(cpu_kernels.cpu_flags())
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO_SRC))
    if args.hf_worker:
        return hf_worker(args)
    missing = [] if args.skip_hf else missing_for_hf()
    if missing:
        print(f"train_e2e: the Hugging Face side needs {', '.join(missing)} (pip install 'transformers[torch]'); "
              "or pass --skip-hf", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="train_e2e-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        # masklm's own run trains the tokenizer both sides use (and checks the corpus) before any timing;
        # a --work folder that has one for this vocabulary size already reuses it
        tokenizer = work / f"prep-{args.vocab_size}" / "tokenizer"
        if not (tokenizer / "tokenizer.json").is_file():
            run_child(masklm_cmd(args, tokenizer.parent, 1, None), "the preparation run")
        fpt = flops_per_token(args, _vocab(tokenizer))
        # the runs go to a new folder each time, so a --work folder can be used again
        rows = rounds(args, Path(tempfile.mkdtemp(prefix=f"runs-{tag(args)}-", dir=work)), tokenizer, fpt)
        result = summary(args, rows, fpt)
    print(json.dumps(result), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _vocab(tokenizer_dir: Path) -> int:
    from masklm.tokenizer import Tokenizer

    return Tokenizer.load(tokenizer_dir).vocab_size


if __name__ == "__main__":
    sys.exit(main())
