"""Inference with a fine-tuned model: batched logits, ``classify`` and ``tag`` (what ``Pipeline.classify``,
``Pipeline.tag`` and ``masklm predict`` call).

``classify`` gives ``{"label", "score"}`` per text (the softmax probability of the top class; with
``top_k=None`` a list over all classes, best first); for regression ``{"value"}``. ``tag`` splits raw
text on whitespace (as the training words were split) or takes pre-split word lists, and gives Hugging
Face-style entity groups ``{"entity_group", "score", "word", "start", "end"}`` (score: the mean of the
words' tag probabilities; start/end: character offsets, None for pre-split input), or with
``aggregate=False`` one ``{"word", "entity", "score", "start", "end"}`` per word.
"""

from __future__ import annotations

from typing import Any

import torch

from masklm.errors import InputError
from masklm.finetune.encode import encode_text, encode_words, split_words
from masklm.finetune.metrics import bio_spans
from masklm.inference.batching import pad


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def batched_logits(model: torch.nn.Module, rows: list[list[int]], pad_id: int, batch_size: int = 32
                   ) -> list[torch.Tensor]:
    """Task logits per row on CPU, float32: ``[N]`` per sequence, ``[T, N]`` per tagged row (unpadded).
    Rows are batched by length; the model is put in eval mode and left there."""
    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out: list[torch.Tensor | None] = [None] * len(rows)
    for lo in range(0, len(order), batch_size):
        idx = order[lo:lo + batch_size]
        input_ids, mask = pad([rows[i] for i in idx], pad_id)
        logits = model(input_ids.to(_device(model)), mask.to(_device(model))).float().cpu()
        for j, i in enumerate(idx):
            out[i] = logits[j, :len(rows[i])] if logits.dim() == 3 else logits[j]
    return out  # type: ignore[return-value]


def sequence_values(model: torch.nn.Module, logits: list[torch.Tensor]) -> list[float]:
    """Regression outputs in the training targets' scale."""
    task = model.task
    mean, std = float(task.get("target_mean", 0.0)), float(task.get("target_std", 1.0))
    return [float(x[0]) * std + mean for x in logits]


def word_tags(logits: torch.Tensor, first: list[int], labels: list[str]) -> tuple[list[str], list[float]]:
    """Each word's tag and probability, read at its first sub-token (a word without tokens gets O)."""
    probs = logits.softmax(-1)
    tags, scores = [], []
    for pos in first:
        if pos < 0:
            tags.append("O")
            scores.append(1.0)
            continue
        p, i = probs[pos].max(-1)
        tags.append(labels[int(i)])
        scores.append(float(p))
    return tags, scores


def _need(model: torch.nn.Module, kinds: tuple[str, ...], what: str) -> dict[str, Any]:
    task = getattr(model, "task", None)
    if task is None:
        raise InputError(f"this folder has no task head, so it cannot {what}; fine-tune it first with "
                         "'masklm finetune'")
    if task["type"] not in kinds:
        use = "tag" if task["type"] == "tagging" else "classify"
        raise InputError(f"this folder is a fine-tuned {task['type']} model, which cannot {what}; use {use}")
    return task


def classify(model: torch.nn.Module, tokenizer: Any, inputs: Any, top_k: int | None = 1,
             batch_size: int = 32) -> Any:
    """Labels (classification) or values (regression) for a text, a ``(text, pair)`` tuple, or a list."""
    task = _need(model, ("classification", "regression"), "classify texts")
    single = isinstance(inputs, (str, tuple))
    items = [inputs] if single else list(inputs)
    if not items:
        raise InputError("no inputs given; pass a text or a list of texts")
    if top_k is not None and top_k < 1:
        raise InputError(f"top_k must be >= 1 or None, got {top_k}")
    max_length = model.config.max_position_embeddings
    rows = []
    for i, item in enumerate(items):
        text, pair = (item if isinstance(item, tuple) and len(item) == 2 else (item, None))
        rows.append(encode_text(tokenizer, text, pair, max_length, f"input {i}"))
    logits = batched_logits(model, rows, tokenizer.pad_id, batch_size)
    if task["type"] == "regression":
        results: list[Any] = [{"value": v} for v in sequence_values(model, logits)]
    else:
        labels = task["labels"]
        results = []
        for row in logits:
            probs = row.softmax(-1)
            ranked = [{"label": labels[int(i)], "score": float(probs[i])} for i in probs.argsort(descending=True)]
            results.append(ranked[0] if top_k == 1 else ranked[:top_k])
    return results[0] if single else results


def tag(model: torch.nn.Module, tokenizer: Any, inputs: Any, aggregate: bool = True,
        batch_size: int = 32) -> Any:
    """Entities (or per-word tags) for a text, or a list of texts and/or pre-split word lists."""
    task = _need(model, ("tagging",), "tag texts")
    single = isinstance(inputs, str)  # a list of strings is a list of texts; pre-split: a list of lists
    items = [inputs] if single else list(inputs)
    if not items:
        raise InputError("no inputs given; pass a text or a list of texts")
    max_length = model.config.max_position_embeddings
    rows, firsts, words_all, spans_all, texts = [], [], [], [], []
    for i, item in enumerate(items):
        if isinstance(item, str):
            words, spans = split_words(item)
            texts.append(item)
        elif isinstance(item, (list, tuple)) and all(isinstance(w, str) for w in item):
            words, spans = list(item), None
            texts.append(None)
        else:
            raise InputError(f"input {i} is {type(item).__name__}; pass a text or a list of words")
        ids, first = encode_words(tokenizer, words, max_length, f"input {i}")
        rows.append(ids)
        firsts.append(first)
        words_all.append(words)
        spans_all.append(spans)
    logits = batched_logits(model, rows, tokenizer.pad_id, batch_size)
    results = []
    for row, first, words, spans, text in zip(logits, firsts, words_all, spans_all, texts):
        tags, scores = word_tags(row, first, task["labels"])
        if not aggregate:
            results.append([{"word": w, "entity": t, "score": s, "start": sp[0] if sp else None,
                             "end": sp[1] if sp else None}
                            for w, t, s, sp in zip(words, tags, scores, spans or [None] * len(words))])
            continue
        entities = []
        for kind, a, b in bio_spans(tags):
            start, end = (spans[a][0], spans[b - 1][1]) if spans else (None, None)
            word = text[start:end] if text is not None else " ".join(words[a:b])
            entities.append({"entity_group": kind, "score": sum(scores[a:b]) / (b - a), "word": word,
                             "start": start, "end": end})
        results.append(entities)
    return results[0] if single else results

