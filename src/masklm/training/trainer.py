"""The training loop: text -> tokenizer -> shards -> packed rows -> objective -> model -> loss.

One run folder holds everything: ``tokenizer/``, ``data/`` (shards), ``checkpoints/step-N/``,
``final/`` (a model folder), ``metrics.jsonl``, ``training_args.json`` and ``loss.png``.

``Trainer.run`` has torchtitan's shape: ``setup()`` (data, model, objectives, optimizer, resume), then
a loop of ``train_step`` / ``log_step`` / ``validate`` / ``checkpoint``, then ``finish()``. The pieces
live beside it: ``training.config`` (the fields), ``training.progress`` (LR, mask-rate and
sequence-length schedules, pure functions of (step, total)), ``training.row_order`` (which rows a step
reads), ``training.evaluate`` (held-out split and evaluators), ``training.metrics`` (metrics.jsonl),
``training.run_folder`` (what ``--out`` may hold, when a resume may go on) and ``training.checkpoint``.

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
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from masklm.data.corpus import iter_documents
from masklm.data.packing import PackedRows, split_documents
from masklm.data.shards import ShardedCorpus, prepare_shards
from masklm.errors import ConfigError, DiskFull, FolderInUse, MaskLMError, out_of_memory
from masklm.files import disk_full, empty_locked_dir, folder_lock, make_dirs
from masklm.host_memory import keep_freed_memory
from masklm.modeldir import load_model_dir, save_model_dir
from masklm.models import build_model, cpu_kernels
from masklm.objectives import (
    ObjectiveBatch,
    batch_denominator,
    build_schedule,
    objective_loss,
    step_loss_scales,
)
from masklm.objectives.reading import TrainedAs
from masklm.tokenizer import Tokenizer, train_tokenizer, vocab_shortfall
from masklm.training import checkpoint as ckpt
from masklm.training import run_folder, run_record
from masklm.training.config import TrainConfig
from masklm.training.distributed import DistInfo, all_reduce_sum, barrier, cleanup, setup
from masklm.training.evaluate import evaluate_heldout, held_out_line, heldout_rows, heldout_share_note
from masklm.training.metrics import LossWindow, MetricsLog, PlainProgress, StepStats
from masklm.training.optim import build_optimizer, set_lr
from masklm.training.plots import plot_metrics
from masklm.training.precision import (
    MixedPrecision,
    cpu_precision_advice,
    enable_tf32,
    finite,
    grad_norm,
    maybe_compile,
)
from masklm.training.row_order import RowOrder
from masklm.wording import counted

TIME_LIMIT_PROBE_STEPS = 5  # steps timed before a time limit fixes the run's length


class TrainingStopped(MaskLMError):
    """The loss or the gradients turned non-finite: the run stops before the update; its folder stays."""


def _log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train(cfg: TrainConfig, log: Callable[[str], None] = _log_to_stderr) -> Path:
    """Run ``cfg`` to the end (or to its time limit) and return the run folder."""
    info = setup(cfg.device)
    run_dir = Path(cfg.out)
    created = None  # the topmost folder this run made, when it made the run folder
    try:
        # the run folder exists before the lock is taken, so a new run holds it as a resumed one does, and a
        # second run (or resume) into a folder that one is writing is refused
        created = make_dirs(run_dir) if info.is_main else None
        try:
            with folder_lock(run_dir, f"masklm train --out {run_dir}", enabled=info.is_main):
                return Trainer(cfg, info, log if info.is_main else (lambda _m: None)).run()
        except (OSError, RuntimeError) as exc:  # out of memory (torch.OutOfMemoryError is a RuntimeError) or
            # a full disk (metrics appended outside the atomic writes) is one line; any other is a bug
            if isinstance(exc, RuntimeError) and (oom := out_of_memory(exc, cfg.batch_size, cfg.max_seq_len,
                                                                        cfg.device)):
                raise oom from None
            if disk_full(exc, run_dir):
                raise DiskFull(run_dir) from None
            raise
    except MaskLMError as exc:
        # Bad input found before training wrote anything of value: leave nothing half-made behind.
        # A run that diverged keeps its folder: its metrics show what happened; a folder that another run
        # locked first (it may have been made here a moment before) is that run's.
        kept = ckpt.list_checkpoints(run_dir)
        if created and not kept and not isinstance(exc, (TrainingStopped, FolderInUse)):
            shutil.rmtree(created, ignore_errors=True)
        if isinstance(exc, DiskFull) and info.is_main:  # what to run once there is space again
            then = (f"masklm train --out {run_dir} --resume continues from {kept[-1].name}" if kept else
                    "run the command again" + ("" if not run_folder.held_files(run_dir) else
                                               " with --overwrite (no checkpoint was saved)"))
            raise DiskFull(exc.where, then) from None
        raise
    finally:
        cleanup(info)


class Trainer:
    """One run. After ``setup()``: ``model``, ``optimizer``, ``objectives``, ``order`` (rows per step),
    ``heldout`` (rows), ``total`` (steps in the run; a time limit may lower it), ``start_step`` and
    ``tokens_seen`` (both restored on resume)."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, log: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.info = info
        self.log = log
        self.run_dir = Path(cfg.out)

    # ---- the loop -----------------------------------------------------------------------------

    def run(self) -> Path:
        """Set up, train until ``total`` steps are done, then evaluate and save the final model."""
        self.setup()
        self._setup_speed()
        step = self.start_step
        while step < self.total:
            step += 1
            stats = self.train_step(step)
            if self.cfg.time_limit and step == self.start_step + TIME_LIMIT_PROBE_STEPS and step < self.total:
                self._fit_time_limit(step)
            self.log_step(step, stats)
            if self._due(step, self.cfg.eval_every) and step != self.total:  # the final one follows the loop
                self.validate(step)
            if self._due(step, self.cfg.save_every):
                self.checkpoint(step, stats.epoch)
        return self.finish()

    @staticmethod
    def _due(step: int, every: int) -> bool:
        return bool(every) and step % every == 0

    def train_step(self, step: int) -> StepStats:
        """Optimizer step number ``step`` (1-based; the schedules and the row order read ``step - 1``, the
        steps already taken): this rank's micro-batches, each loss scaled so the step's gradient is the
        global per-objective token mean, forward under autocast (``--precision``), backward (DDP syncs on
        the last micro-batch only), then ``_update`` (clip, check, update)."""
        cfg, info = self.cfg, self.info
        done = step - 1
        lr = cfg.lr * self.lr_schedule(done, self.total)
        set_lr(self.optimizer, lr)
        rate = self.mask_rates(done, self.total)
        micro, epoch = self._micro_batches(done, rate)
        # Denominators and token counts summed over ranks, so every rank scales its loss the same way.
        counts = torch.tensor([batch_denominator(m) for m in micro]
                              + [float(sum(int(m.attention_mask.sum()) for m in micro))], device=info.device)
        counts = all_reduce_sum(counts, info).tolist()
        scales = step_loss_scales([m.objective for m in micro], counts[:-1])
        loss_sum = torch.zeros((), device=info.device)
        for a, (mb, scale) in enumerate(zip(micro, scales)):
            sync = a == len(micro) - 1
            with (self.ddp.no_sync() if self.ddp is not None and not sync else nullcontext()):
                with self.amp.autocast():
                    out = self.step_model(mb.input_ids, attention_mask=mb.attention_mask, labels=mb.labels,
                                          causal=mb.causal, document_ids=mb.document_ids, return_loss=False)
                part, _ = objective_loss(out.logits, mb)  # fp32 (the logits are upcast)
                # DDP averages gradients over ranks; scale so the result is the global mean.
                self.amp.backward(part * (info.world_size * scale))
            loss_sum += part.detach() * scale
        loss = self._update(step, all_reduce_sum(loss_sum, info))
        tokens = int(counts[-1])
        self.tokens_seen += tokens
        return StepStats(loss=loss,
                         objective="+".join(sorted({m.objective for m in micro})), tokens=tokens, lr=lr,
                         mask_rate=rate, masked=any(m.mask_rate is not None for m in micro), epoch=epoch)

    def _update(self, step: int, loss_sum: torch.Tensor) -> float:
        """Unscale (fp16), clip, check and apply the step's gradients -> the step's loss (summed over ranks).

        A non-finite loss or gradient norm stops the run before the update (``TrainingStopped``), so no
        checkpoint or model of bad weights is ever written. With fp16 an overflow is the loss scaler's
        business: it skips the update and lowers the scale; only an overflow at a scale of 1 or less (the
        forward itself is non-finite) stops the run. Loss and norm are read in one device sync."""
        self.amp.unscale(self.optimizer)
        # without a loss scaler, a fused AdamW's step applies the clipping factor (no pass of its own)
        norm = grad_norm(self.model, self.cfg.clip_norm, None if self.amp.scaler is not None else self.optimizer)
        loss, norm_value = torch.stack([loss_sum.float(), norm.float().to(loss_sum.device)]).tolist()
        if self.amp.scaler is None and not finite(loss, norm_value):
            self._stop(step, f"the training loss is {loss:g} and the gradient norm {norm_value:g}")
        if self.amp.scaler is not None and not finite(norm_value):
            scale = self.amp.scale
            if scale <= 1.0:
                self._stop(step, f"the fp16 gradients are non-finite even at loss scale {scale:g}")
            self.log(f"step {step}: fp16 overflow, the loss scaler skipped this update (scale {scale:g} -> "
                     f"{scale / 2:g})")
        self.amp.step(self.optimizer)
        self.optimizer.grad_scale = None  # grad_norm's clipping factor, applied by that step
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def _stop(self, step: int, what: str) -> None:
        """Stop the run at ``step`` with one line; the last checkpoint (if any) and metrics.jsonl stay."""
        self.progress.close()
        where = ckpt.what_is_kept(self.run_dir, self.cfg.save_every)
        fix = "use --precision bf16 or fp32, or lower --lr" if self.amp.scaler else "lower --lr or raise --warmup"
        raise TrainingStopped(f"training stopped at step {step}: {what}; the weights were not updated, {where}; "
                              f"{fix}")

    def _micro_batches(self, done: int, rate: float) -> tuple[list[ObjectiveBatch], int]:
        """This rank's micro-batches of the step after ``done`` steps, each made by the objective the
        schedule picks for it, masked at ``rate`` -> (batches, epoch key of the rows)."""
        cfg, info = self.cfg, self.info
        rows_source, batch_size, epoch, global_rows = self.order.at(done, self.total)
        epoch_float = done / self.steps_per_epoch
        self._announce_phase(done, epoch_float)
        micro = []
        for a in range(cfg.grad_accum):
            lo = (a * info.world_size + info.rank) * batch_size
            rows = global_rows[lo:lo + batch_size]
            host = rows_source.batch(rows)
            single = bool(host.pop("single_document"))  # read on the host: no device sync
            batch = {k: v.to(info.device) for k, v in host.items()}
            micro_index = done * cfg.grad_accum + a
            objective = self.objectives.objective_at(done, micro_index, epoch_float, self.tokens_seen)
            made = objective(batch, rows.tolist(), epoch, rate=rate)
            # one document per row: the model gets no document ids, so attention needs no document mask
            micro.append(replace(made, document_ids=None) if single else made)
        return micro, epoch

    def _announce_phase(self, done: int, epoch_float: float) -> None:
        """Log and record the start of an AntLM phase."""
        phase = self.objectives.phase_at(done, epoch_float, self.tokens_seen)
        if phase != self.phase:
            self.phase = phase
            first = self.objectives.objective_at(done, done * self.cfg.grad_accum, epoch_float, self.tokens_seen)
            name = first.name
            self.log(f"step {done}: phase {phase + 1} of the schedule begins ({name})")
            self.metrics.write({"step": done, "objective": name, "phase": phase + 1})

    def log_step(self, step: int, stats: StepStats) -> None:
        """Add the step to the window; every ``log_every`` steps (and at the end) write its lines."""
        self.window.add(stats)
        self.progress.update(1)
        if step % self.cfg.log_every == 0 or step == self.total:
            records = self.window.flush(step, self.tokens_seen, stats)
            for record in records:
                self.metrics.write(record)
            self.progress.set_postfix(loss=f"{stats.loss:.3f}", tok_s=f"{records[0]['tokens_per_s']:.0f}")
            if self.plain and (line := self.plain.line(step, self.total, records)):
                self.log(line)

    def validate(self, step: int) -> dict[str, float] | None:
        """Held-out MLM loss and accuracy always; causal perplexity and the diffusion bound when trained for.
        The main process evaluates and records; the others wait. -> the record, None off the main process."""
        if not self.info.is_main or len(self.heldout) == 0:
            barrier(self.info)
            return None
        cfg = self.cfg
        trained_as = TrainedAs.from_names(self.objectives.names)
        with self.amp.autocast():
            result = evaluate_heldout(self.model, self.heldout, self.tok, trained_as.evaluators,
                                      batch_size=cfg.batch_size, max_batches=cfg.eval_batches, seed=cfg.seed,
                                      diffusion_samples=cfg.eval_diffusion_samples,
                                      diffusion_eps=cfg.diffusion_eps, shift=bool(trained_as.mask_shift))
        self.metrics.write({"step": step, "objective": "eval", **result})
        barrier(self.info)
        return result

    def checkpoint(self, step: int, epoch: int) -> None:
        if self.info.is_main:
            ckpt.save_checkpoint(self.run_dir, step, self.model, self.optimizer, {
                "step": step, "tokens_seen": self.tokens_seen, "schedule_total_steps": self.total,
                "epoch": epoch, "config": self.cfg.to_dict(), "world_size": self.info.world_size,
            } | self._scaler_state(), keep_last=self.cfg.keep_last)

    def finish(self) -> Path:
        """The final evaluation, the model folder ``final/``, and the loss plot."""
        self.progress.close()
        final_eval = self.validate(self.total)
        if self.info.is_main:
            args = self.cfg.to_dict() | {"objectives": list(self.objectives.names), "steps": self.total,
                                         "tokens_seen": self.tokens_seen}
            read = self.cfg.rows_read(self.tok.model_max_length, self.model.config.max_position_embeddings,
                                      self.model.config.arch)
            save_model_dir(self.run_dir / "final", self.model, self.tok.with_max_length(read), training_args=args)
            plot_metrics(self.metrics.path, self.run_dir / "loss.png")
            if final_eval:
                self.log(held_out_line(final_eval))
            self.log(f"model saved to {self.run_dir / 'final'}")
        barrier(self.info)
        return self.run_dir

    # ---- precision and compilation (training.precision) ------------------------------------------

    def _setup_speed(self) -> None:
        """After ``setup``: autocast and the fp16 loss scaler (its state restored on resume), TF32 matmuls on
        CUDA, freed memory kept on a CPU (``host_memory``), the fused CPU kernels built (or one line saying
        why not), ``--compile`` of the forward (eager fallback)."""
        device = self.info.device
        enable_tf32(device)
        keep_freed_memory(device)
        advice = cpu_precision_advice(self.cfg.precision, cpu_kernels.cpu_flags()) if device.type == "cpu" else None
        if advice:
            self.log(advice)
        if device.type == "cpu" and self.cfg.precision in ("fp32", "bf16") and not self.cfg.compile:
            why = cpu_kernels.unavailable()  # builds them now (seconds, once per machine), not inside step 1
            if why and why != "MASKLM_CPU_KERNELS=0":
                self.log(f"fused CPU kernels not used: {why}; training runs on PyTorch's ops (slower)")
        self.amp = MixedPrecision(self.cfg.precision, device)
        if self.amp.scaler is not None and self.start_step:
            state_file = self.run_dir / "checkpoints" / f"step-{self.start_step}" / "trainer_state.json"
            saved = json.loads(state_file.read_text(encoding="utf-8")).get("grad_scaler")
            if saved:
                self.amp.scaler.load_state_dict(saved)
        if self.cfg.compile:
            self.step_model = maybe_compile(self.step_model, device, self.log, "the training forward")

    def _scaler_state(self) -> dict:
        """The fp16 loss scaler's state for the checkpoint (plain numbers), so a resume continues its scale."""
        return {"grad_scaler": self.amp.scaler.state_dict()} if self.amp.scaler is not None else {}

    # ---- set-up -------------------------------------------------------------------------------

    def setup(self) -> None:
        """Tokenizer, data, model, objectives, optimizer and schedules; then resume from the latest good
        checkpoint (with ``resume``), record the run's arguments, and wrap the model for DDP."""
        cfg, info = self.cfg, self.info
        # every rank, before any rank writes: refusals leave the folder as it was
        self.record, self.resume_from = run_folder.check_run_folder(cfg, self.run_dir, self.log, info.world_size)
        barrier(info)
        if info.is_main:
            if cfg.overwrite and self.run_dir.is_dir():  # train() holds it: keep the lock file
                empty_locked_dir(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not cfg.resume:  # first, so whatever a run stopped early leaves (a tokenizer, half-made shards)
                # is known as its start: --resume auto starts it again over that (the full record follows)
                run_record.write_record(self.run_dir, cfg, corpus_files=[], tokenizer_fingerprint=None,
                                        previous=None, step=0)
        barrier(info)
        self.tok = self._tokenizer()
        self.order, self.heldout = self._data(self.tok)
        self.model = self._model(self.tok)
        self.objectives = build_schedule(cfg.objective, self.tok, cfg.objective_options(), unit=cfg.schedule_unit)
        self.optimizer = build_optimizer(self.model, cfg.lr, cfg.weight_decay, tuple(cfg.betas), cfg.eps,
                                         kind=cfg.optimizer, no_decay=cfg.no_decay)
        self.lr_schedule, self.mask_rates = cfg.lr_schedule(), cfg.mask_rates()
        self.steps_per_epoch = self.order.steps_per_epoch[0]
        self.total = self._run_length()
        self.start_step, self.tokens_seen = 0, 0
        if cfg.resume:
            self._resume()
        if info.is_main:
            run_record.write_record(self.run_dir, cfg, corpus_files=self.corpus_files,
                                    tokenizer_fingerprint=self.tok.fingerprint(), previous=self.record,
                                    step=self.start_step)
            self._describe()
        self.ddp = None
        if info.enabled:
            device_ids = [info.device.index] if info.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self.step_model = self.ddp or self.model
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", enabled=info.is_main)
        self.metrics.truncate(self.start_step)
        shown = cfg.progress and info.is_main  # a bar on a terminal; plain lines in a log file or a pipe
        bar = shown and getattr(sys.stderr, "isatty", lambda: False)()
        self.progress = tqdm(total=self.total, initial=self.start_step, disable=not bar, file=sys.stderr,
                             unit="step", dynamic_ncols=True, desc="train")
        self.plain = PlainProgress() if shown and not bar else None
        self.model.train()
        self.phase = self.objectives.phase_at(self.start_step, self.start_step / self.steps_per_epoch,
                                              self.tokens_seen)
        self.started = time.perf_counter()
        self.window = LossWindow()

    def _tokenizer(self) -> Tokenizer:
        """The run's tokenizer; on resume, ConfigError unless it is the recorded one."""
        tok = self._load_tokenizer()
        recorded = (self.record or {}).get("tokenizer_fingerprint")
        if recorded and tok.fingerprint() != recorded:
            source = self.cfg.init_from or self.cfg.tokenizer or self.run_dir / "tokenizer"
            raise ConfigError(f"the tokenizer in {source} is not the one this run was trained with (its "
                              "fingerprint differs); restore it, or start afresh with --overwrite")
        return tok

    def _load_tokenizer(self) -> Tokenizer:
        cfg, tok_dir = self.cfg, self.run_dir / "tokenizer"
        if cfg.init_from:
            return Tokenizer.load(cfg.init_from)
        if cfg.tokenizer:
            return Tokenizer.load(cfg.tokenizer)
        if not (tok_dir / "tokenizer.json").is_file():
            if cfg.resume:  # a new tokenizer would not fit the checkpoint's embeddings
                raise ConfigError(f"{tok_dir} is missing, and the run needs the tokenizer it was trained with; "
                                  "restore it, or start afresh with --overwrite")
            if self.info.is_main:
                self.log(f"training a {cfg.tokenizer_kind} tokenizer (vocab {cfg.vocab_size}) on the corpus")
                tok = train_tokenizer(lambda: iter_documents(cfg.corpus), kind=cfg.tokenizer_kind,
                                      vocab_size=cfg.vocab_size, model_max_length=cfg.seq_len)
                if note := vocab_shortfall(tok, cfg.vocab_size):
                    self.log(note)
                tok.save(tok_dir)
            barrier(self.info)
        return Tokenizer.load(tok_dir)

    def _data(self, tok: Tokenizer) -> tuple[RowOrder, PackedRows]:
        cfg, data_dir = self.cfg, self.run_dir / "data"
        if self.info.is_main:  # a resumed run rebuilds damaged shards of unchanged files, or changed ones
            prepare_shards(cfg.corpus, tok, data_dir, log=self.log,  # only with --rebuild-data (checked)
                           overwrite=cfg.resume or cfg.rebuild_data)
        barrier(self.info)
        corpus = ShardedCorpus(data_dir)
        self.corpus_files = corpus.manifest["source_files"]
        train_docs, _ = split_documents(corpus.num_documents, cfg.heldout_fraction, cfg.seed)
        order = RowOrder(corpus, train_docs, tok.pad_id, cfg.seq_lengths(), cfg.batch_size,
                         cfg.grad_accum * self.info.world_size, cfg.seed)
        if len(order.rows[0]) == 0:
            raise ConfigError("the training split is empty; use a larger corpus or a smaller --heldout-fraction")
        heldout = heldout_rows(corpus, heldout_fraction=cfg.heldout_fraction, seed=cfg.seed, seq_len=cfg.seq_len,
                               pad_id=tok.pad_id)
        return order, heldout

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

    def _run_length(self) -> int:
        """Steps to run: --max-steps, else --epochs, else the objective schedule's total, else one epoch."""
        cfg, schedule = self.cfg, self.objectives.schedule
        tokens_per_step = self.order.rows_per_step[0] * cfg.seq_len
        scheduled = schedule.total_steps(self.steps_per_epoch, tokens_per_step=tokens_per_step)
        if cfg.max_steps is not None:
            total = cfg.max_steps
        elif cfg.epochs is not None:
            total = max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        else:
            total = scheduled or self.steps_per_epoch
        if scheduled is not None and scheduled != total:
            self.log(f"note: the objective schedule covers {schedule.total_length:g} {cfg.schedule_unit} "
                     f"({scheduled} steps) but the run has {total} steps; "
                     + ("its last phase continues to the end" if total > scheduled else "it is cut short"))
        return total

    def _resume(self) -> None:
        """Weights, optimizer, RNG states, step, tokens seen and run length from the checkpoint found by
        ``run_folder.check_run_folder``. The run keeps the checkpoint's length (a time limit may have shortened it)
        unless this resume gives another --max-steps, --epochs or --time-limit."""
        found = self.resume_from
        state = ckpt.load_checkpoint(found, self.model, self.optimizer)
        self.start_step, self.tokens_seen = state["step"], state["tokens_seen"]
        if run_folder.keeps_length(self.cfg, state):
            self.total = state["schedule_total_steps"]
        run_folder.refuse_finished(self.run_dir, self.start_step, self.total)
        self.log(f"resumed from {found} at step {self.start_step} of {self.total}")

    def _describe(self) -> None:
        train_rows = self.order.rows[0]
        self.log(
            f"{self.model.config.arch}: {sum(p.numel() for p in self.model.parameters()):,} parameters, "
            f"{counted(len(train_rows), 'training row')} of {self.cfg.seq_len} tokens "
            f"({counted(train_rows.num_tokens, 'token')}), {counted(len(self.heldout), 'held-out row')}; "
            f"{counted(self.total, 'step')} of {counted(self.order.rows_per_step[0], 'row')} "
            f"({counted(self.steps_per_epoch, 'step')} per epoch)"
        )
        if note := heldout_share_note(len(self.heldout), len(train_rows), self.cfg.heldout_fraction):
            self.log(note)
        self.log(f"objective: {self.objectives.schedule.describe()}")

    def _fit_time_limit(self, done: int) -> None:
        """Shorten the run so it ends within ``time_limit`` minutes; the schedules follow ``total``."""
        elapsed = time.perf_counter() - self.started
        per_step = elapsed / (done - self.start_step)  # the steps timed in this process
        remaining = self.cfg.time_limit * 60.0 - elapsed
        fit = torch.tensor([float(done + max(1, int(remaining / per_step)))], device=self.info.device)
        if self.info.enabled:  # every rank must agree on the length
            torch.distributed.broadcast(fit, src=0)
        new_total = min(self.total, int(fit.item()))
        if new_total < self.total:
            self.total = self.progress.total = new_total
            self.log(f"time limit {self.cfg.time_limit:g} min: training for {new_total} steps")
