"""Fine-tuning: a task head on a pretrained encoder, trained end to end.

AdamW (weight decay 0.01, none on biases and norms) with linear warmup over the first ``warmup`` of
the steps and linear decay to 0, gradient clipping at 1.0. After every epoch the validation set is
evaluated; when the watched metric (default: accuracy, Pearson or entity F1) improves, the model is
written to ``out`` as a model folder (atomically: a temporary sibling renamed into place), so ``out``
always holds the best model so far. Training stops after ``patience`` epochs without improvement.
Regression targets are standardised with the training set's mean and standard deviation (stored in
the task block and undone at prediction).

``precision`` (``--precision``) is training's: bf16 or fp16 autocast over fp32 weights, gradients and AdamW
state (fp16 with a loss scaler: ``training.precision.MixedPrecision``), TF32 matmuls for fp32 on CUDA;
validation runs in fp32, so the watched metric and the best model's choice do not move with it.

Long inputs (``windows``; always for question answering): each example is read as overlapping windows
(``masklm.finetune.encode``). A sequence task trains on its windows' pooled logits (mean or max, the
pooling prediction uses), a batch being ``batch_size`` examples with all their windows; tagging and
question answering train on each window as a row of its own (a tag is learnt in every window that holds
the word; an answer is the target of the windows that hold all of it, the others point at [CLS], as in
Hugging Face's ``run_qa.py``). The windows are counted and reported, and the folder's task block keeps the
spec, so ``masklm predict`` reads long inputs the same way.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from masklm.errors import ConfigError, DataError, DiskFull
from masklm.finetune import data as fdata
from masklm.finetune.folder import OutputGuard, load_folder
from masklm.finetune.heads import POOLINGS, QA_LABELS, TASKS, TOKEN_TASKS, build_finetuned
from masklm.finetune.metrics import DEFAULT_METRIC, TASK_METRICS
from masklm.finetune.predict import DEFAULT_MAX_ANSWER_LENGTH
from masklm.finetune.splits import Split, evaluate, qa_split, sequence_split, tagging_split
from masklm.host_memory import keep_freed_memory
from masklm.inference.batching import WINDOW_POOLS, WindowSpec, max_input_length, pad, pool_windows
from masklm.modeldir import save_model_dir
from masklm.training.distributed import pick_device
from masklm.training.optim import build_optimizer, set_lr
from masklm.training.precision import MixedPrecision, check_precision, enable_tf32
from masklm.training.progress import build_lr_schedule
from masklm.wording import counted


@dataclass
class FinetuneArgs:
    """Everything ``masklm finetune`` takes besides the model folder. Column names of None mean the
    task's defaults: ``text``/``label`` (sequence files), ``tokens``/``tags`` (tagging JSONL).
    ``windows`` reads inputs over the model's maximum as windows sharing ``stride`` tokens (None: a quarter
    of the window), sequence outputs pooled by ``window_pool``; question answering always uses windows.
    ``null_threshold`` (question answering): None means 0.0 when the training file has questions without an
    answer (SQuAD v2.0), else never an empty answer; see ``masklm.finetune.predict.best_answer``."""

    task: str
    train: str
    validation: str
    out: str
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    epochs: int = 10
    lr: float = 3e-5
    batch_size: int = 32
    patience: int = 3
    seed: int = 0
    warmup: float = 0.1
    weight_decay: float = 0.01
    pooling: str = "mean"
    metric: str | None = None
    device: str | None = None
    windows: bool = False
    stride: int | None = None
    window_pool: str = "mean"
    max_answer_length: int = DEFAULT_MAX_ANSWER_LENGTH
    null_threshold: float | None = None
    precision: str = "fp32"

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; choose one of: {', '.join(TASKS)}")
        check_precision(self.precision)
        if self.pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {self.pooling!r}; choose one of: {', '.join(POOLINGS)}")
        for name in ("epochs", "batch_size", "patience", "max_answer_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.lr < math.inf:
            raise ConfigError(f"--lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"--warmup is the share of the steps spent warming up, in [0, 1), got {self.warmup}")
        if not 0 <= self.weight_decay < math.inf:
            raise ConfigError(f"--weight-decay must be a finite number >= 0, got {self.weight_decay}")
        if self.null_threshold is not None and (math.isnan(self.null_threshold) or self.null_threshold == -math.inf):
            raise ConfigError(f"--null-threshold must be a number (inf: never answer ''), got {self.null_threshold}")
        if self.metric is not None and self.metric not in TASK_METRICS[self.task]:
            raise ConfigError(f"metric {self.metric!r} does not fit {self.task}; choose one of: "
                              f"{', '.join(TASK_METRICS[self.task])}")
        if self.task == "tagging" and self.text_pair_column:
            raise ConfigError("--text-pair-column applies to classification and regression, not tagging")
        if self.task == "question-answering" and (self.text_column or self.text_pair_column or self.label_column):
            raise ConfigError("question answering reads SQuAD's keys (question, context, answers); leave out "
                              "--text-column, --text-pair-column and --label-column")
        if self.window_pool not in WINDOW_POOLS:
            raise ConfigError(f"unknown --window-pool {self.window_pool!r}; choose {' or '.join(WINDOW_POOLS)}")
        if self.stride is not None and self.stride < 0:
            raise ConfigError(f"--stride must be >= 0 tokens (the overlap of consecutive windows), got {self.stride}")

    def window_spec(self) -> WindowSpec | None:
        if self.windows or self.task == "question-answering":
            return WindowSpec(self.stride, self.window_pool)
        return None


def _load_splits(args: FinetuneArgs, tokenizer: Any, max_length: int) -> tuple[Split, Split, dict[str, Any]]:
    """Read, validate and encode both files; returns the splits and the task block."""
    task: dict[str, Any] = {"type": args.task}
    spec = args.window_spec()
    if spec is not None:
        task["windows"] = spec.as_dict()
    if args.task == "question-answering":
        train, valid = (fdata.read_qa_file(f) for f in (args.train, args.validation))
        threshold = args.null_threshold
        if threshold is None and any(not e.answers for e in train):
            threshold = 0.0
        if threshold == math.inf:  # never answer '': what None means, and JSON has no Infinity
            threshold = None
        task.update(labels=list(QA_LABELS), num_labels=2, max_answer_length=args.max_answer_length,
                    null_threshold=threshold)
        return (*(qa_split(x, tokenizer, max_length, spec) for x in (train, valid)), task)
    if args.task == "tagging":
        keys = (args.text_column or "tokens", args.label_column or "tags")
        train, valid = (fdata.read_tagging_file(f, *keys) for f in (args.train, args.validation))
        labels = fdata.tag_list(train, args.train)
        index = {t: i for i, t in enumerate(labels)}
        task.update(labels=labels, num_labels=len(labels))
        return (*(tagging_split(x, index, tokenizer, max_length, spec, args.train) for x in (train, valid)), task)

    regression = args.task == "regression"
    cols = (args.text_column or "text", args.text_pair_column, args.label_column or "label")
    train, valid = (fdata.read_sequence_file(f, *cols, regression=regression) for f in (args.train, args.validation))
    task.update(pooling=args.pooling, text_column=cols[0], text_pair_column=cols[1], label_column=cols[2])
    if regression:
        values = torch.tensor([float(e.label) for e in train], dtype=torch.float64)
        mean, std = float(values.mean()), float(values.std(unbiased=False))
        if not std > 0:
            raise DataError(f"{args.train}: every training target is {mean:g}; regression needs varied targets")
        task.update(labels=[cols[2]], num_labels=1, target_mean=mean, target_std=std)
        encode_target: Callable[[Any, str], Any] = lambda y, where: (float(y) - mean) / std  # noqa: E731
    else:
        labels = fdata.label_list(train, args.train)
        index = {x: i for i, x in enumerate(labels)}
        task.update(labels=labels, num_labels=len(labels), id2label={str(i): x for i, x in enumerate(labels)})

        def encode_target(y: Any, where: str) -> int:
            if y not in index:
                raise DataError(f"{where}: label {y!r} does not occur in the training file {args.train}; "
                                f"known labels: {', '.join(map(repr, labels))}")
            return index[y]
    return (*(sequence_split(x, tokenizer, max_length, spec, encode_target) for x in (train, valid)), task)


def _loss(model: torch.nn.Module, logits: torch.Tensor, targets: list[Any], mask: torch.Tensor) -> torch.Tensor:
    kind = model.task["type"]
    if kind == "regression":
        return F.mse_loss(logits[:, 0].float(), torch.tensor(targets, dtype=torch.float32, device=logits.device))
    if kind == "classification":
        return F.cross_entropy(logits.float(), torch.tensor(targets, device=logits.device))
    if kind == "question-answering":  # mean of the start and end cross-entropies over each row's tokens
        gold = torch.tensor(targets, device=logits.device)                                  # [B, 2]
        x = logits.float().masked_fill(~mask.bool().to(logits.device)[..., None], -torch.inf)  # [B, T, 2]
        return (F.cross_entropy(x[..., 0], gold[:, 0]) + F.cross_entropy(x[..., 1], gold[:, 1])) / 2
    labels, _ = pad(targets, -100)
    return F.cross_entropy(logits.float().flatten(0, 1), labels.to(logits.device).flatten(), ignore_index=-100)


def _batch_loss(model: torch.nn.Module, split: Split, units: list[int], pad_id: int,
                device: torch.device) -> torch.Tensor:
    """The loss of one batch of training units (examples whose windows' logits are pooled, or rows)."""
    if model.task["type"] in TOKEN_TASKS:
        rows, local = units, None
    else:
        rows, local = [], []
        for i in units:
            lo, hi = split.groups[i]
            local.append((len(rows), len(rows) + hi - lo))
            rows.extend(range(lo, hi))
    input_ids, mask = pad([split.rows[r] for r in rows], pad_id)
    logits = model(input_ids.to(device), mask.to(device))
    if local is not None:  # one logit row per example: its windows pooled (one window: itself)
        how = model.task.get("windows", {}).get("pool", "mean")
        logits = torch.stack([pool_windows(logits[lo:hi], how) for lo, hi in local])
    return _loss(model, logits, [split.targets[i] for i in units], mask)


def _stderr(message: str) -> None:
    print(f"masklm: {message}", file=sys.stderr, flush=True)


def _describe(args: FinetuneArgs, model_dir: str | Path, train: Split, valid: Split, task: dict[str, Any],
              steps: int, metric: str, unk_id: int) -> list[str]:
    """The lines ``finetune`` logs before training: the data, the windows, the plan."""
    lines = [f"fine-tuning {model_dir} for {args.task}: {counted(len(train.groups), 'training example')} and "
             f"{counted(len(valid.groups), 'validation example')}, {counted(task['num_labels'], 'output')}, "
             f"{counted(args.epochs, 'epoch')} of {counted(steps, 'step')}; early stopping on validation {metric}"]
    for split, file in ((train, args.train), (valid, args.validation)):
        lines.extend(split.notes(file, unk_id))
    if "windows" in task:
        counts = [f"{name} {s.windows()['examples']} examples as {s.windows()['windows']} windows (at most "
                  f"{s.windows()['max_per_example']} per example)" for name, s in (("training", train),
                                                                                 ("validation", valid))]
        stride = task["windows"]["stride"]
        lines.append(f"windows of up to the model's maximum, overlapping by "
                     f"{'a quarter' if stride is None else f'{stride} tokens'}: {'; '.join(counts)}")
    if train.unanswerable:
        lines.append(f"{train.unanswerable} training answers are longer than a window: their windows are trained "
                     "as 'no answer here'")
    return lines


def _train_epoch(model: torch.nn.Module, split: Split, optimizer: Any, amp: MixedPrecision, args: FinetuneArgs,
                 pad_id: int, device: torch.device, generator: torch.Generator, step: int, total_steps: int
                 ) -> tuple[float, int]:
    """One pass over the training units in a seeded order -> (mean loss per unit, steps so far)."""
    schedule = build_lr_schedule("linear", warmup=args.warmup)
    units = len(split.rows) if model.task["type"] in TOKEN_TASKS else len(split.groups)
    model.train()
    total = 0.0
    for batch in torch.randperm(units, generator=generator).split(args.batch_size):
        idx = batch.tolist()
        set_lr(optimizer, args.lr * schedule(step, total_steps))
        with amp.autocast():
            loss = _batch_loss(model, split, idx, pad_id, device)  # fp32: the losses upcast the logits
        optimizer.zero_grad(set_to_none=True)
        amp.backward(loss)
        amp.unscale(optimizer)  # clip the true gradients (fp16)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        amp.step(optimizer)
        total += float(loss.detach()) * len(idx)
        step += 1
    return total / units, step


def finetune(model_dir: str | Path, args: FinetuneArgs, log: Callable[[str], None] | None = _stderr
             ) -> dict[str, Any]:
    """Fine-tune the model folder ``model_dir``; the best model goes to ``args.out``.

    Returns ``{"out", "best_epoch", "metric", "best", "validation" (the best epoch's metrics),
    "history" (per epoch: loss and metrics), "stopped_early", "windows"}`` (``windows``: per split the
    examples, windows and most windows of one example; None without windows).
    """
    say = log or (lambda _: None)
    args.validate()
    metric = args.metric or DEFAULT_METRIC[args.task]
    base, _, tokenizer = load_folder(model_dir)
    train_split, valid_split, task = _load_splits(args, tokenizer, max_input_length(base.config, tokenizer))
    task["metric"] = metric
    torch.manual_seed(args.seed)
    model = build_finetuned(base, task)
    device = pick_device(args.device)
    keep_freed_memory(device)
    enable_tf32(device)
    amp = MixedPrecision(args.precision, device)
    model.to(device)
    optimizer = build_optimizer(model, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.999), eps=1e-8)
    units = len(train_split.rows) if args.task in TOKEN_TASKS else len(train_split.groups)
    steps_per_epoch = math.ceil(units / args.batch_size)
    generator = torch.Generator().manual_seed(args.seed)
    for line in _describe(args, model_dir, train_split, valid_split, task, steps_per_epoch, metric, tokenizer.unk_id):
        say(line)
    history: list[dict[str, Any]] = []
    guard = OutputGuard(args.out)  # another run's model in --out is never replaced
    best, best_epoch, bad_epochs, step = -math.inf, 0, 0, 0
    saved_epoch, saved_score = 0, -math.inf
    try:
        for epoch in range(1, args.epochs + 1):
            started = time.time()
            loss, step = _train_epoch(model, train_split, optimizer, amp, args, tokenizer.pad_id, device, generator, step,
                                      args.epochs * steps_per_epoch)
            scores = evaluate(model, valid_split, tokenizer.pad_id, args.batch_size)
            record = {"epoch": epoch, "loss": loss, **scores}
            history.append(record)
            improved = scores[metric] > best
            shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
            say(f"epoch {epoch}: loss {record['loss']:.4f}, validation {shown} ({time.time() - started:.1f}s)"
                + (" - best, saved" if improved else ""))
            if improved:
                best, best_epoch, bad_epochs = scores[metric], epoch, 0
                task["validation"] = {"epoch": epoch, **scores}
                guard.check()
                try:
                    save_model_dir(args.out, model, tokenizer,
                                   training_args={"finetune": {**asdict(args), "model": str(model_dir),
                                                               "run_id": guard.run_id}, "history": history})
                except DiskFull as exc:  # --out keeps the last best model, if any, so a rerun needs --overwrite
                    raise DiskFull(exc.where, f"run the command again with --overwrite ({args.out} holds the model of "
                                              f"epoch {saved_epoch})" if saved_epoch else "run the command again") from None
                guard.saved()
                saved_epoch, saved_score = epoch, best
            else:
                bad_epochs += 1
                if bad_epochs >= args.patience:
                    say(f"no improvement in {metric} for {args.patience} epochs; stopping")
                    break
    except KeyboardInterrupt:  # Ctrl-C: say what --out holds; the CLI then says "interrupted"
        if saved_epoch:
            say(f"{args.out} holds the best model so far (epoch {saved_epoch}, validation {metric} {saved_score:.4f}): "
                "predict can use it; a new run into it needs --overwrite")
        raise
    stopped_early = len(history) < args.epochs
    say(f"best validation {metric} {best:.4f} at epoch {best_epoch}; model in {args.out}")
    windows = {"train": train_split.windows(), "validation": valid_split.windows()} if "windows" in task else None
    return {"out": str(Path(args.out)), "best_epoch": best_epoch, "metric": metric, "best": best,
            "validation": task["validation"], "history": history, "stopped_early": stopped_early,
            "windows": windows}
