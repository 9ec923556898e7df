"""The training loop: text -> tokenizer -> shards -> packed rows -> objective -> model -> loss.

One run folder holds everything: ``tokenizer/``, ``data/`` (shards), ``checkpoints/step-N/``,
``final/`` (a model folder), ``metrics.jsonl``, ``training_args.json`` and ``loss.png``.

Determinism: the row order of epoch e is a permutation seeded by (seed, e), masks depend only on
(seed, epoch, row), and checkpoints carry every RNG state, so on CPU N steps + resume + N steps gives
the same weights as 2N steps straight. Under ``torchrun`` each rank takes its slice of every global
batch, and the loss is normalised by the masked-token count of the whole global batch, so the
gradients equal those of one process running the same global batch.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from masklm.config import TrainConfig
from masklm.data.corpus import iter_documents
from masklm.data.masking import mask_tokens
from masklm.data.packing import PackedRows, split_documents
from masklm.data.shards import ShardedCorpus, prepare_shards
from masklm.errors import ConfigError, MaskLMError
from masklm.modeldir import load_model_dir, save_model_dir
from masklm.models import build_model
from masklm.objectives.base import batch_denominator, next_token_labels, objective_loss, step_loss_scales
from masklm.objectives.clm import evaluate_causal
from masklm.objectives.diffusion import evaluate_diffusion
from masklm.objectives.reading import TrainedAs
from masklm.objectives.schedule import build_schedule
from masklm.tokenizer import Tokenizer, train_tokenizer
from masklm.training import checkpoint as ckpt
from masklm.training.distributed import DistInfo, all_reduce_sum, barrier, cleanup, setup
from masklm.training.optim import build_optimizer, set_lr
from masklm.training.schedules import MaskRateSchedule, SeqLenSchedule, build_lr_schedule

EVAL_MASK_RATE = 0.15
EVAL_SEED_OFFSET = 1_000_003  # held-out masks never coincide with training masks


def _log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train(cfg: TrainConfig, log: Callable[[str], None] = _log_to_stderr) -> Path:
    """Run ``cfg`` to the end (or to its time limit) and return the run folder."""
    info = setup(cfg.device)
    run_dir = Path(cfg.out)
    created = not run_dir.exists()
    try:
        return Trainer(cfg, info, log if info.is_main else (lambda _m: None)).run()
    except MaskLMError:
        # Bad input found before training wrote anything of value: leave nothing half-made behind.
        if created and info.is_main and not ckpt.list_checkpoints(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        cleanup(info)


class Trainer:
    def __init__(self, cfg: TrainConfig, info: DistInfo, log: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.info = info
        self.log = log
        self.run_dir = Path(cfg.out)

    # ---- set-up -------------------------------------------------------------------------------

    def _check_run_folder(self) -> None:
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"--out {self.run_dir} is a file; choose a folder for the run")
        if ckpt.list_checkpoints(self.run_dir) and not self.cfg.resume:
            raise ConfigError(
                f"run folder {self.run_dir} already has checkpoints; pass --resume to continue it "
                "or choose another --out"
            )

    def _tokenizer(self) -> Tokenizer:
        cfg, tok_dir = self.cfg, self.run_dir / "tokenizer"
        if cfg.init_from:
            return Tokenizer.load(cfg.init_from)
        if cfg.tokenizer:
            return Tokenizer.load(cfg.tokenizer)
        if not (tok_dir / "tokenizer.json").is_file():
            if self.info.is_main:
                self.log(f"training a {cfg.tokenizer_kind} tokenizer (vocab {cfg.vocab_size}) on the corpus")
                tok = train_tokenizer(lambda: iter_documents(cfg.corpus), kind=cfg.tokenizer_kind,
                                      vocab_size=cfg.vocab_size, model_max_length=cfg.seq_len)
                tok.save(tok_dir)
            barrier(self.info)
        return Tokenizer.load(tok_dir)

    def _data(self, tok: Tokenizer) -> tuple[RowOrder, PackedRows]:
        cfg, data_dir = self.cfg, self.run_dir / "data"
        if self.info.is_main:
            prepare_shards(cfg.corpus, tok, data_dir, log=self.log)
        barrier(self.info)
        corpus = ShardedCorpus(data_dir)
        train_docs, heldout_docs = split_documents(corpus.num_documents, cfg.heldout_fraction, cfg.seed)
        seq_schedule = SeqLenSchedule.preset(cfg.seq_len_schedule, base_seq_len=cfg.seq_len)
        order = RowOrder(corpus, train_docs, tok.pad_id, seq_schedule, cfg.batch_size,
                         cfg.grad_accum * self.info.world_size, cfg.seed)
        heldout_rows = PackedRows(corpus, heldout_docs, cfg.seq_len, tok.pad_id)
        if len(order.rows[0]) == 0:
            raise ConfigError("the training split is empty; use a larger corpus or a smaller --heldout-fraction")
        return order, heldout_rows

    def _model(self, tok: Tokenizer) -> nn.Module:
        torch.manual_seed(self.cfg.seed)
        if self.cfg.init_from:
            model, _, _ = load_model_dir(self.cfg.init_from)
            self.log(f"starting from the weights in {self.cfg.init_from}")
        else:
            model = build_model(self.cfg.model_config(tok.vocab_size))
        if model.config.max_position_embeddings < self.cfg.max_seq_len and model.config.arch == "bert":
            raise ConfigError(
                f"rows of {self.cfg.max_seq_len} tokens exceed the model's max_position_embeddings "
                f"{model.config.max_position_embeddings}; lower --seq-len or use another --seq-len-schedule"
            )
        return model.to(self.info.device)

    # ---- the loop -----------------------------------------------------------------------------

    def run(self) -> Path:
        cfg, info = self.cfg, self.info
        self._check_run_folder()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tok = self._tokenizer()
        order, heldout_rows = self._data(tok)
        train_rows = order.rows[0]
        model = self.model = self._model(tok)
        objs = build_schedule(cfg.objective, tok, unit=cfg.schedule_unit, rate=0.15, split=cfg.mask_split,
                              masking=cfg.masking, seed=cfg.seed, diffusion_eps=cfg.diffusion_eps)
        optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, tuple(cfg.betas), cfg.eps,
                                    kind=cfg.optimizer, no_decay=cfg.no_decay)

        rows_per_step = order.rows_per_step[0]
        steps_per_epoch = order.steps_per_epoch[0]
        total = order.total_steps = self._run_length(objs, steps_per_epoch, rows_per_step)
        schedule = build_lr_schedule(cfg.schedule, total, cfg.warmup_steps, cfg.min_lr_ratio, cfg.lr_cooldown)
        rate_schedule = MaskRateSchedule.parse(cfg.mask_rate, total)

        start_step, tokens_seen = 0, 0
        if cfg.resume:
            found = ckpt.latest_good(self.run_dir, log=self.log)
            if found is None:
                self.log(f"--resume: no complete checkpoint in {self.run_dir}; starting from step 0")
            else:
                state = ckpt.load_checkpoint(found, model, optimizer)
                start_step, tokens_seen = state["step"], state["tokens_seen"]
                total = order.total_steps = state["schedule_total_steps"]
                schedule.resize(total)
                rate_schedule = MaskRateSchedule.parse(cfg.mask_rate, total)
                self.log(f"resumed from {found} at step {start_step}")
        if info.is_main:
            cfg.save_json(self.run_dir / "training_args.json")
            self.log(
                f"{model.config.arch}: {sum(p.numel() for p in model.parameters()):,} parameters, "
                f"{len(train_rows):,} training rows of {cfg.seq_len} tokens ({train_rows.num_tokens:,} tokens), "
                f"{len(heldout_rows):,} held-out rows; {total:,} steps of {rows_per_step} rows "
                f"({steps_per_epoch:,} steps per epoch)"
            )
            self.log(f"objective: {objs.schedule.describe()}")

        ddp = None
        if info.enabled:
            device_ids = [info.device.index] if info.device.type == "cuda" else None
            ddp = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        step_model = ddp or model

        metrics_path = self.run_dir / "metrics.jsonl"
        if info.is_main:
            _truncate_metrics(metrics_path, start_step)
        progress = _progress(total, start_step, enabled=cfg.progress and info.is_main)
        model.train()
        t_start = t_last = time.perf_counter()
        window: dict[str, list[float]] = {}  # objective -> losses of the steps since the last log
        window_tokens = 0
        phase = objs.phase_at(start_step, start_step / steps_per_epoch, tokens_seen)
        step = start_step
        for step in range(start_step, total):
            rows_source, batch_size, epoch, global_rows = order.at(step)
            epoch_float = step / steps_per_epoch
            new_phase = objs.phase_at(step, epoch_float, tokens_seen)
            if new_phase != phase:
                phase = new_phase
                name = objs.objective_at(step, step * cfg.grad_accum, epoch_float, tokens_seen).name
                self.log(f"step {step}: phase {phase + 1} of the schedule begins ({name})")
                self._write_metrics(metrics_path, {"step": step, "objective": name, "phase": phase + 1})
            lr = set_lr(optimizer, cfg.lr, schedule, step)
            rate = rate_schedule(step)
            micro = []
            for a in range(cfg.grad_accum):
                lo = (a * info.world_size + info.rank) * batch_size
                rows = global_rows[lo:lo + batch_size]
                batch = {k: v.to(info.device) for k, v in rows_source.batch(rows).items()}
                objective = objs.objective_at(step, step * cfg.grad_accum + a, epoch_float, tokens_seen)
                if hasattr(objective, "rate"):
                    objective.rate = rate
                micro.append(objective(batch, rows.tolist(), epoch))
            # Denominators and token counts summed over ranks, so every rank scales its loss the same way.
            counts = torch.tensor([batch_denominator(m) for m in micro]
                                  + [float(sum(int(m.attention_mask.sum()) for m in micro))], device=info.device)
            counts = all_reduce_sum(counts, info).tolist()
            scales = step_loss_scales([m.objective for m in micro], counts[:-1])
            loss_sum = torch.zeros((), device=info.device)
            for a, (mb, scale) in enumerate(zip(micro, scales)):
                sync = a == len(micro) - 1
                with (ddp.no_sync() if ddp is not None and not sync else nullcontext()):
                    out = step_model(mb.input_ids, attention_mask=mb.attention_mask, labels=mb.labels,
                                     causal=mb.causal, document_ids=mb.document_ids)
                    part, _ = objective_loss(out.logits, mb)
                    # DDP averages gradients over ranks; scale so the result is the global mean.
                    (part * (info.world_size * scale)).backward()
                loss_sum += part.detach() * scale
            if cfg.clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss = all_reduce_sum(loss_sum, info).item()
            step_tokens = int(counts[-1])
            tokens_seen += step_tokens
            window_tokens += step_tokens
            window.setdefault("+".join(sorted({m.objective for m in micro})), []).append(loss)
            done = step + 1
            progress.update(1)

            if cfg.time_limit and step == start_step + 4 and done < total:
                total = order.total_steps = self._fit_time_limit(total, done, time.perf_counter() - t_start,
                                                                 schedule)
                rate_schedule = MaskRateSchedule.parse(cfg.mask_rate, total)
                progress.total = total

            if done % cfg.log_every == 0 or done == total:
                now = time.perf_counter()
                tokens_per_s = window_tokens / max(now - t_last, 1e-9)
                for name, losses in window.items():  # one line per objective, so each names its source
                    self._write_metrics(metrics_path, {
                        "step": done, "objective": name, "loss": sum(losses) / len(losses), "lr": lr,
                        "tokens_per_s": tokens_per_s, "epoch": epoch, "tokens": tokens_seen,
                        "mask_rate": rate, "steps": len(losses)})
                progress.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:.0f}")
                t_last, window_tokens, window = now, 0, {}
            if cfg.eval_every and done % cfg.eval_every == 0 and done != total:
                self._eval(model, heldout_rows, tok, done, metrics_path, objs.names)
            if cfg.save_every and done % cfg.save_every == 0 and info.is_main:
                ckpt.save_checkpoint(self.run_dir, done, model, optimizer, {
                    "step": done, "tokens_seen": tokens_seen, "schedule_total_steps": schedule.total_steps,
                    "epoch": epoch, "config": cfg.to_dict(),
                }, keep_last=cfg.keep_last)
            if done >= total:
                break
        progress.close()

        final_eval = self._eval(model, heldout_rows, tok, total, metrics_path, objs.names)
        if info.is_main:
            args = cfg.to_dict() | {"objectives": list(objs.names), "steps": total, "tokens_seen": tokens_seen}
            save_model_dir(self.run_dir / "final", model, tok, training_args=args)
            from masklm.training.plots import plot_metrics

            plot_metrics(metrics_path, self.run_dir / "loss.png")
            if final_eval:
                self.log(f"held-out masked-token accuracy {final_eval['eval_accuracy']:.4f}, "
                         f"loss {final_eval['eval_loss']:.4f}")
            self.log(f"model saved to {self.run_dir / 'final'}")
        barrier(info)
        return self.run_dir

    def _run_length(self, objs, steps_per_epoch: int, rows_per_step: int) -> int:
        """Steps to run: --max-steps, else --epochs, else the objective schedule's total, else one epoch."""
        cfg = self.cfg
        scheduled = objs.schedule.total_steps(steps_per_epoch, tokens_per_step=rows_per_step * cfg.seq_len)
        if cfg.max_steps is not None:
            total = cfg.max_steps
        elif cfg.epochs is not None:
            total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
        else:
            total = scheduled or steps_per_epoch
        if scheduled is not None and scheduled != total:
            self.log(f"note: the objective schedule covers {objs.schedule.total_length:g} {cfg.schedule_unit} "
                     f"({scheduled} steps) but the run has {total} steps; "
                     + ("its last phase continues to the end" if total > scheduled else "it is cut short"))
        return total

    def _fit_time_limit(self, total: int, done: int, elapsed: float, schedule) -> int:
        """Shorten the run so it ends within ``time_limit`` minutes; the LR schedule follows."""
        per_step = elapsed / done
        remaining = self.cfg.time_limit * 60.0 - elapsed
        fit = torch.tensor([float(done + max(1, int(remaining / per_step)))], device=self.info.device)
        if self.info.enabled:  # every rank must agree on the length
            torch.distributed.broadcast(fit, src=0)
        new_total = min(total, int(fit.item()))
        if new_total < total:
            schedule.resize(new_total)
            self.log(f"time limit {self.cfg.time_limit:g} min: training for {new_total} steps")
        return new_total

    def _write_metrics(self, path: Path, record: dict[str, Any]) -> None:
        if self.info.is_main:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _eval(self, model: nn.Module, rows: PackedRows, tok: Tokenizer, step: int,
              metrics_path: Path, objectives: tuple[str, ...]) -> dict[str, float] | None:
        """Held-out MLM loss and accuracy always; causal perplexity and the diffusion bound when trained for."""
        if not self.info.is_main or len(rows) == 0:
            barrier(self.info)
            return None
        cfg = self.cfg
        result = evaluate_mlm(model, rows, tok, batch_size=cfg.batch_size, max_batches=cfg.eval_batches,
                              seed=cfg.seed)
        evaluators = TrainedAs.from_names(objectives).evaluators
        if "causal" in evaluators:
            causal = evaluate_causal(model, rows, tok, batch_size=cfg.batch_size, max_batches=cfg.eval_batches)
            result |= {"causal_loss": causal["causal_loss"], "causal_ppl": causal["causal_ppl"]}
        if "diffusion" in evaluators:
            bound = evaluate_diffusion(model, rows, tok, batch_size=cfg.batch_size, max_batches=cfg.eval_batches,
                                       samples=cfg.eval_diffusion_samples, seed=cfg.seed + EVAL_SEED_OFFSET,
                                       eps=cfg.diffusion_eps)
            result |= {k: bound[k] for k in ("diffusion_nelbo", "diffusion_ppl_bound", "diffusion_nelbo_stderr",
                                             "samples")}
        self._write_metrics(metrics_path, {"step": step, "objective": "eval", **result})
        barrier(self.info)
        return result


@torch.no_grad()
def evaluate_mlm(model: nn.Module, rows: PackedRows, tok: Tokenizer, *, batch_size: int, max_batches: int,
                 seed: int, baseline_id: int | None = None, shift: bool = False) -> dict[str, float]:
    """Masked-token loss and accuracy at a fixed 15% rate, with the same masks at every call.

    With ``baseline_id``, also the accuracy of always guessing that token on the same positions. With
    ``shift``, the prediction for masked token j is read at j-1, as GPT-BERT's MNTP models make it (a
    masked token that starts a row or a document then has nothing to be read from and is skipped).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum, correct, count, baseline = 0.0, 0, 0, 0
    n_rows = min(len(rows), batch_size * max_batches)
    for lo in range(0, n_rows, batch_size):
        row_ids = list(range(lo, min(lo + batch_size, n_rows)))
        batch = {k: v.to(device) for k, v in rows.batch(row_ids).items()}
        inputs, labels = mask_tokens(batch["input_ids"], rows=row_ids, seed=seed + EVAL_SEED_OFFSET, epoch=0,
                                     rate=EVAL_MASK_RATE, mask_id=tok.mask_id, vocab_size=tok.vocab_size,
                                     special_ids=tok.special_ids, attention_mask=batch["attention_mask"])
        if shift:
            labels = next_token_labels(labels, batch["attention_mask"], batch["document_ids"])
        if not (labels != -100).any():
            continue
        out = model(inputs, attention_mask=batch["attention_mask"], labels=labels,
                    document_ids=batch["document_ids"])
        target = labels[labels != -100]
        loss_sum += F.cross_entropy(out.logits.float(), target, reduction="sum").item()
        correct += int((out.logits.argmax(-1) == target).sum())
        count += int(target.numel())
        if baseline_id is not None:
            baseline += int((target == baseline_id).sum())
    model.train(was_training)
    result = {"eval_loss": loss_sum / max(count, 1), "eval_accuracy": correct / max(count, 1), "eval_tokens": count}
    if baseline_id is not None:
        result["baseline_accuracy"] = baseline / max(count, 1)
    return result


class RowOrder:
    """Which packed rows each optimizer step reads.

    Per sequence-length phase (one phase unless a schedule such as LTG-BERT's 128 -> 512 is chosen) the
    training documents are packed at that phase's length, and the phase's steps walk through epochs of
    a permutation seeded by (seed, epoch). The last step of an epoch wraps around to the start of the
    permutation so every step has a full global batch and no row is dropped. Everything is a pure
    function of the step, so a resumed run reads exactly the rows an uninterrupted one would.
    """

    def __init__(self, corpus: ShardedCorpus, doc_indices: np.ndarray, pad_id: int, seq_schedule: SeqLenSchedule,
                 batch_size: int, micro_per_step: int, seed: int) -> None:
        self.seq_schedule = seq_schedule
        self.seed = seed
        self.rows = [PackedRows(corpus, doc_indices, p.seq_len, pad_id) for p in seq_schedule.phases]
        self.batch_sizes = [max(1, int(batch_size * p.batch_fraction + 0.5)) for p in seq_schedule.phases]
        self.rows_per_step = [b * micro_per_step for b in self.batch_sizes]
        self.steps_per_epoch = [max(1, math.ceil(len(r) / n)) for r, n in zip(self.rows, self.rows_per_step)]
        self.total_steps = 1
        self._cache: tuple[tuple[int, int], np.ndarray] | None = None

    def at(self, step: int) -> tuple[PackedRows, int, int, np.ndarray]:
        """-> (rows of the phase, micro-batch size, epoch key for masking, the step's global row indices)."""
        phase = self.seq_schedule.phase_index(step, self.total_steps)
        first = self.seq_schedule.boundaries(self.total_steps)[phase]
        epoch, k = divmod(step - first, self.steps_per_epoch[phase])
        # Masks must differ between phases that reuse epoch numbers (rows of another length).
        key = epoch + 1_000_000 * phase
        n = self.rows_per_step[phase]
        if self._cache is None or self._cache[0] != (phase, epoch):
            perm = np.random.default_rng([self.seed, key]).permutation(len(self.rows[phase]))
            self._cache = ((phase, epoch), np.resize(perm, self.steps_per_epoch[phase] * n))
        return self.rows[phase], self.batch_sizes[phase], key, self._cache[1][k * n:(k + 1) * n]


def _truncate_metrics(path: Path, after_step: int) -> None:
    """Keep only the records up to ``after_step``: a resumed run rewrites what came after its checkpoint."""
    kept = []
    if after_step > 0 and path.is_file():
        kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line)["step"] <= after_step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, file=sys.stderr, unit="step",
                dynamic_ncols=True, desc="train")
