"""LTG-BERT training throughput on CPU, with the share of the step spent in attention.

For each size (xs and small at vocabulary 16384, batch x 128 tokens, 15% masked) one training step is
forward + backward + AdamW step. The anchor is Hugging Face's ``BertForMaskedLM`` (sdpa) of the same
width, depth, heads and vocabulary, timed in the same process in alternating rounds, so the ratio shows
what LTG-BERT's disentangled attention and GEGLU cost against plain BERT. The attention share is wall
time between hooks around every attention module, forward and backward (CPU ops run synchronously, so
the intervals add up), over the whole step time.

With ``--reference DIR`` (a checkout of ltgoslo/ltg-bert, never committed to this repository: its
``babylm/train/model.py``, or a folder holding that ``model.py``), the reference ``Bert`` is timed too, on
the same weights (``hf.ltg_reference.export_reference_state_dict``), the same batch (sequence-first, as it
takes it) and the same loss (mean cross-entropy over the labelled rows it returns), with the same AdamW;
before timing, both losses are computed in eval mode and their difference is printed.

Prints one JSON line per round (seconds per step of each model, the ratios, the load average), then the
summary object.

    python benchmarks/ltg_throughput.py                    # xs and small, batch 16, ~3-5 minutes on 2 cores
    python benchmarks/ltg_throughput.py --sizes xs --rounds 2
    python benchmarks/ltg_throughput.py --sizes xs --reference ~/src/ltg-bert
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

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


def timed_steps(model, data, steps: int, timer: AttentionTimer | None = None,
                loss_of=None) -> tuple[float, float]:
    """(seconds per step, attention seconds per step) over ``steps`` steps; ``loss_of(model, data)`` gives
    the loss (default: ``model(**data).loss``)."""
    loss_of = loss_of or (lambda m, d: m(**d).loss)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    if timer is not None:
        timer.seconds = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        loss_of(model, data).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    elapsed = (time.perf_counter() - start) / steps
    return elapsed, (timer.seconds / steps if timer else 0.0)


def load_reference(folder: str, cfg: ModelConfig, state_dict: dict) -> torch.nn.Module:
    """ltgoslo's reference ``Bert`` from a checkout, with masklm's weights (same names after export)."""
    from masklm.hf.ltg_reference import export_reference_state_dict

    root = Path(folder).expanduser()
    path = next((p for p in (root / "babylm" / "train" / "model.py", root / "model.py") if p.is_file()), None)
    if path is None:
        raise SystemExit(f"--reference {folder}: no babylm/train/model.py or model.py there; "
                         "pass a checkout of https://github.com/ltgoslo/ltg-bert")
    spec = importlib.util.spec_from_file_location("ltg_reference_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fields = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "max_position_embeddings", "position_bucket_size", "layer_norm_eps", "hidden_dropout_prob",
              "attention_probs_dropout_prob")
    ref = module.Bert(SimpleNamespace(**{f: getattr(cfg, f) for f in fields}))
    missing, unexpected = ref.load_state_dict(export_reference_state_dict(state_dict, cfg), strict=False)
    if [m for m in missing if not m.endswith("position_indices")] or unexpected:
        raise SystemExit(f"reference weights do not match: missing {missing}, unexpected {unexpected}")
    return ref.train()


def reference_loss(ref, data) -> torch.Tensor:
    """The reference's step: sequence-first inputs, True = padding, logits at the labelled rows."""
    ids, labels = data["input_ids"].t(), data["labels"].t()  # [T, B]
    logits = ref(ids, torch.zeros(ids.shape[1], ids.shape[0], dtype=torch.bool), labels)
    flat = labels.flatten()
    return torch.nn.functional.cross_entropy(logits, flat[flat != -100])


def _load_average() -> float:
    return os.getloadavg()[0]


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
    runs = {"masklm_ltg": (ltg, timer, None), "hf_bert": (bert, None, None)}
    extra = {}
    if args.reference:
        ref = load_reference(args.reference, cfg, ltg.state_dict())
        with torch.no_grad():
            ltg.eval(), ref.eval()
            extra["eval_loss_diff_vs_reference"] = abs(float(ltg(**data).loss) - float(reference_loss(ref, data)))
            ltg.train(), ref.train()
        runs["reference_ltg"] = (ref, None, reference_loss)
    for model, _, loss_of in runs.values():
        timed_steps(model, data, 1, loss_of=loss_of)  # warm-up
    seconds = {name: [] for name in runs}
    attn_share = []
    for r in range(args.rounds):
        names = list(runs)
        names = names[r % len(names):] + names[:r % len(names)]
        line = {}
        for name in names:
            model, t, loss_of = runs[name]
            step, attn = timed_steps(model, data, args.steps, t, loss_of)
            seconds[name].append(step)
            line[name] = round(step, 4)
            if t is not None:
                attn_share.append(attn / step)
        print(json.dumps({"size": size, "round": r + 1, "order": names, "seconds_per_step": line,
                          "ratio_masklm_speedup": {k: round(v / line["masklm_ltg"], 3)
                                                   for k, v in line.items() if k != "masklm_ltg"},
                          "load_average_1min": _load_average()}), flush=True)
    out = {
        "size": size, "params": sum(p.numel() for p in ltg.parameters()),
        "ltg_tokens_per_s": round(tokens / statistics.median(seconds["masklm_ltg"]), 1),
        "hf_bert_tokens_per_s": round(tokens / statistics.median(seconds["hf_bert"]), 1),
        "ratio_ltg_over_hf_bert": round(statistics.median(
            b / a for a, b in zip(seconds["masklm_ltg"], seconds["hf_bert"])), 3),
        "attention_share": round(statistics.median(attn_share), 3),
    }
    if args.reference:
        out["reference_tokens_per_s"] = round(tokens / statistics.median(seconds["reference_ltg"]), 1)
        out["ratio_masklm_over_reference"] = round(statistics.median(
            b / a for a, b in zip(seconds["masklm_ltg"], seconds["reference_ltg"])), 3)
    return out | extra


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["xs", "small"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--vocab-size", type=int, default=16384)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--reference", metavar="DIR", help="a checkout of ltgoslo/ltg-bert to time as well")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [run_size(size, args) for size in args.sizes]
    print(json.dumps({"results": results, "batch": [args.batch_size, args.seq_len],
                      "load_average_1min": _load_average(),
                      "machine": {"threads": torch.get_num_threads(), "torch": torch.__version__,
                                  "cpu": platform.processor() or platform.machine()}}, indent=2))


if __name__ == "__main__":
    main()
