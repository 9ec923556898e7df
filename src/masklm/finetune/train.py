"""Fine-tuning: a task head on a pretrained encoder, trained end to end.

AdamW (weight decay 0.01, none on biases and norms) with linear warmup over the first ``warmup`` of
the steps and linear decay to 0, gradient clipping at 1.0. After every epoch the validation set is
evaluated; when the watched metric (default: accuracy, Pearson or entity F1) improves, the model is
written to ``out`` as a model folder (atomically: a temporary sibling renamed into place), so ``out``
always holds the best model so far. Training stops after ``patience`` epochs without improvement.
Regression targets are standardised with the training set's mean and standard deviation (stored in
the task block and undone at prediction).
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

from masklm.errors import ConfigError, DataError
from masklm.finetune import data as fdata
from masklm.finetune.encode import encode_text, encode_words
from masklm.finetune.folder import load_folder
from masklm.finetune.heads import POOLINGS, TASKS, build_finetuned
from masklm.finetune.metrics import (
    DEFAULT_METRIC,
    TASK_METRICS,
    classification_metrics,
    entity_scores,
    regression_metrics,
)
from masklm.finetune.predict import batched_logits, sequence_values, word_tags
from masklm.inference.batching import pad
from masklm.modeldir import save_model_dir
from masklm.training.distributed import pick_device
from masklm.training.optim import build_optimizer, set_lr
from masklm.training.progress import build_lr_schedule


@dataclass
class FinetuneArgs:
    """Everything ``masklm finetune`` takes besides the model folder. Column names of None mean the
    task's defaults: ``text``/``label`` (sequence files), ``tokens``/``tags`` (tagging JSONL)."""

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

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; choose one of: {', '.join(TASKS)}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {self.pooling!r}; choose one of: {', '.join(POOLINGS)}")
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.lr < math.inf or not 0 <= self.warmup < 1:
            raise ConfigError(f"--lr must be a finite number > 0 and --warmup in [0, 1), got {self.lr} and "
                              f"{self.warmup}")
        if not 0 <= self.weight_decay < math.inf:
            raise ConfigError(f"--weight-decay must be a finite number >= 0, got {self.weight_decay}")
        if self.metric is not None and self.metric not in TASK_METRICS[self.task]:
            raise ConfigError(f"metric {self.metric!r} does not fit {self.task}; choose one of: "
                              f"{', '.join(TASK_METRICS[self.task])}")
        if self.task == "tagging" and self.text_pair_column:
            raise ConfigError("--text-pair-column applies to classification and regression, not tagging")


@dataclass
class _Split:
    rows: list[list[int]]
    targets: list[Any]       # class index, standardised float, or a [T] label row (tagging)
    gold: list[Any]          # what metrics compare with: class name, raw float, or word tags
    firsts: list[list[int]]  # tagging: first sub-token of each word


def _load_splits(args: FinetuneArgs, tokenizer: Any, max_length: int) -> tuple[_Split, _Split, dict[str, Any]]:
    """Read, validate and encode both files; returns the splits and the task block."""
    task: dict[str, Any] = {"type": args.task}
    if args.task == "tagging":
        keys = (args.text_column or "tokens", args.label_column or "tags")
        train, valid = (fdata.read_tagging_file(f, *keys) for f in (args.train, args.validation))
        labels = fdata.tag_list(train, args.train)
        index = {t: i for i, t in enumerate(labels)}
        task.update(labels=labels, num_labels=len(labels))
        splits = []
        for sentences in (train, valid):
            split = _Split([], [], [], [])
            for s in sentences:
                unknown = [t for t in s.tags if t not in index]
                if unknown:
                    raise DataError(f"{s.where}: tag {unknown[0]!r} does not occur in the training file "
                                    f"{args.train}; the model can only learn tags it has seen")
                ids, first = encode_words(tokenizer, s.words, max_length, s.where)
                row = [-100] * len(ids)
                for pos, t in zip(first, s.tags):
                    if pos >= 0:
                        row[pos] = index[t]
                split.rows.append(ids)
                split.targets.append(row)
                split.gold.append(s.tags)
                split.firsts.append(first)
            splits.append(split)
        return splits[0], splits[1], task

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
                                f"known labels: {', '.join(labels)}")
            return index[y]
    splits = []
    for examples in (train, valid):
        split = _Split([], [], [], [])
        for e in examples:
            split.rows.append(encode_text(tokenizer, e.text, e.pair, max_length, e.where))
            split.targets.append(encode_target(e.label, e.where))
            split.gold.append(e.label)
        splits.append(split)
    return splits[0], splits[1], task


def evaluate(model: torch.nn.Module, split: _Split, pad_id: int, batch_size: int) -> dict[str, float]:
    """The task's metrics of ``model`` on ``split``."""
    logits = batched_logits(model, split.rows, pad_id, batch_size)
    task = model.task
    if task["type"] == "regression":
        return regression_metrics(split.gold, sequence_values(model, logits))
    if task["type"] == "classification":
        return classification_metrics(split.gold, [task["labels"][int(x.argmax())] for x in logits])
    predicted = [word_tags(x, first, task["labels"])[0] for x, first in zip(logits, split.firsts)]
    return entity_scores(split.gold, predicted)


def _loss(model: torch.nn.Module, logits: torch.Tensor, targets: list[Any]) -> torch.Tensor:
    kind = model.task["type"]
    if kind == "regression":
        return F.mse_loss(logits[:, 0].float(), torch.tensor(targets, dtype=torch.float32, device=logits.device))
    if kind == "classification":
        return F.cross_entropy(logits.float(), torch.tensor(targets, device=logits.device))
    labels, _ = pad(targets, -100)
    return F.cross_entropy(logits.float().flatten(0, 1), labels.to(logits.device).flatten(), ignore_index=-100)


def _stderr(message: str) -> None:
    print(f"masklm: {message}", file=sys.stderr, flush=True)


def finetune(model_dir: str | Path, args: FinetuneArgs, log: Callable[[str], None] | None = _stderr
             ) -> dict[str, Any]:
    """Fine-tune the model folder ``model_dir``; the best model goes to ``args.out``.

    Returns ``{"out", "best_epoch", "metric", "best", "validation" (the best epoch's metrics),
    "history" (per epoch: loss and metrics), "stopped_early"}``.
    """
    say = log or (lambda _: None)
    args.validate()
    metric = args.metric or DEFAULT_METRIC[args.task]
    base, _, tokenizer = load_folder(model_dir)
    train_split, valid_split, task = _load_splits(args, tokenizer, base.config.max_position_embeddings)
    task["metric"] = metric
    torch.manual_seed(args.seed)
    model = build_finetuned(base, task)
    device = pick_device(args.device)
    model.to(device)
    optimizer = build_optimizer(model, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.999), eps=1e-8)
    steps_per_epoch = math.ceil(len(train_split.rows) / args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    schedule = build_lr_schedule("linear", warmup=args.warmup)
    generator = torch.Generator().manual_seed(args.seed)
    say(f"fine-tuning {model_dir} for {args.task}: {len(train_split.rows)} training and "
        f"{len(valid_split.rows)} validation examples, {task['num_labels']} output(s), "
        f"{args.epochs} epochs of {steps_per_epoch} steps; early stopping on validation {metric}")
    history: list[dict[str, Any]] = []
    best, best_epoch, bad_epochs, step = -math.inf, 0, 0, 0
    for epoch in range(1, args.epochs + 1):
        model.train()
        started, total = time.time(), 0.0
        for batch in torch.randperm(len(train_split.rows), generator=generator).split(args.batch_size):
            idx = batch.tolist()
            input_ids, mask = pad([train_split.rows[i] for i in idx], tokenizer.pad_id)
            set_lr(optimizer, args.lr * schedule(step, total_steps))
            loss = _loss(model, model(input_ids.to(device), mask.to(device)), [train_split.targets[i] for i in idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            step += 1
        scores = evaluate(model, valid_split, tokenizer.pad_id, args.batch_size)
        record = {"epoch": epoch, "loss": total / len(train_split.rows), **scores}
        history.append(record)
        improved = scores[metric] > best
        shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
        say(f"epoch {epoch}: loss {record['loss']:.4f}, validation {shown} ({time.time() - started:.1f}s)"
            + (" - best, saved" if improved else ""))
        if improved:
            best, best_epoch, bad_epochs = scores[metric], epoch, 0
            task["validation"] = {"epoch": epoch, **scores}
            save_model_dir(args.out, model, tokenizer,
                           training_args={"finetune": {**asdict(args), "model": str(model_dir)},
                                          "history": history})
        else:
            bad_epochs += 1
            if bad_epochs >= args.patience:
                say(f"no improvement in {metric} for {args.patience} epochs; stopping")
                break
    stopped_early = len(history) < args.epochs
    say(f"best validation {metric} {best:.4f} at epoch {best_epoch}; model in {args.out}")
    return {"out": str(Path(args.out)), "best_epoch": best_epoch, "metric": metric, "best": best,
            "validation": task["validation"], "history": history, "stopped_early": stopped_early}
