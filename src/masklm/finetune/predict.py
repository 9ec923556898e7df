"""Inference with a fine-tuned model: batched logits, ``classify``, ``tag`` and ``answer`` (what
``Pipeline.classify``, ``Pipeline.tag``, ``Pipeline.answer`` and ``masklm predict`` call).

``classify`` gives ``{"label", "score"}`` per text (the softmax probability of the top class; with
``top_k=None`` a list over all classes, best first); for regression ``{"value"}``. ``tag`` splits raw
text on whitespace (as the training words were split) or takes pre-split word lists, and gives Hugging
Face-style entity groups ``{"entity_group", "score", "word", "start", "end"}`` (score: the mean of the
words' tag probabilities; start/end: character offsets, None for pre-split input), or with
``aggregate=False`` one ``{"word", "entity", "score", "start", "end"}`` per word. ``answer`` gives Hugging
Face's question-answering schema ``{"answer", "score", "start", "end"}`` (see ``best_answer``).

Long inputs (``windows``; default: as the folder was fine-tuned, see ``masklm.finetune.encode``): a sequence
task pools its windows' logits (``WindowSpec.pool``: mean or max) before the softmax; a tagger takes each
word's logits from the window where the word's first sub-token is most central
(``batching.central_windows``); question answering looks for the best span in every window. The number of
windows each input took is appended to ``windows_used`` when a list is given (the CLI reports it).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from masklm.errors import InputError
from masklm.finetune.encode import (
    QAWindows,
    encode_qa,
    encode_text,
    encode_text_windows,
    encode_words,
    encode_words_windows,
    split_words,
)
from masklm.finetune.metrics import bio_spans
from masklm.inference.batching import (
    WindowSpec,
    as_windows,
    central_windows,
    max_input_length,
    pad,
    pool_windows,
)

DEFAULT_MAX_ANSWER_LENGTH = 30  # tokens, Hugging Face's run_qa.py and pipeline default


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


def task_windows(task: dict[str, Any], windows: WindowSpec | dict | bool | None) -> WindowSpec | None:
    """The windows to read inputs with: ``windows`` when given (False: none), else the folder's own
    (``task["windows"]``, set when it was fine-tuned on windows; question answering always has them)."""
    if windows is None:
        windows = task.get("windows")
        if windows is None and task["type"] == "question-answering":
            windows = True
    return as_windows(windows)


def sequence_rows(tokenizer: Any, items: list[tuple[str, str | None]], wheres: list[str], max_length: int,
                  spec: WindowSpec | None) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Id rows of texts (or pairs), one per window, and each input's rows ``[lo, hi)``."""
    rows: list[list[int]] = []
    groups = []
    for (text, pair), where in zip(items, wheres):
        lo = len(rows)
        if spec is None:
            rows.append(encode_text(tokenizer, text, pair, max_length, where))
        else:
            rows.extend(encode_text_windows(tokenizer, text, pair, max_length, spec, where))
        groups.append((lo, len(rows)))
    return rows, groups


def pooled_logits(logits: list[torch.Tensor], groups: list[tuple[int, int]], how: str) -> list[torch.Tensor]:
    """Each input's window logits ``[W, N]`` pooled (mean or max) -> ``[N]`` per input."""
    return [pool_windows(torch.stack(logits[lo:hi]), how) for lo, hi in groups]


def merge_word_logits(window_logits: list[torch.Tensor], spans: list[tuple[int, int]] | None, first: list[int]
                      ) -> tuple[torch.Tensor, list[int]]:
    """One sentence's per-window token logits -> (logits ``[P, N]``, each word's row in it or -1): without
    windows (``spans`` None) the one row as is; with them each word's logits from the window where its
    first sub-token (a content position) is most central."""
    if spans is None:
        return window_logits[0], first
    owner = central_windows(spans, spans[-1][1])
    picked, where = [], []
    for pos in first:
        if pos < 0:
            where.append(-1)
            continue
        w = owner[pos]
        picked.append(window_logits[w][pos - spans[w][0] + 1])  # +1: the window's [CLS]
        where.append(len(picked) - 1)
    merged = torch.stack(picked) if picked else torch.zeros(0, window_logits[0].shape[-1])
    return merged, where


def _need(model: torch.nn.Module, kinds: tuple[str, ...], what: str) -> dict[str, Any]:
    task = getattr(model, "task", None)
    if task is None:
        raise InputError(f"this folder has no task head, so it cannot {what}; fine-tune it first with "
                         "'masklm finetune'")
    if task["type"] not in kinds:
        use = {"tagging": "tag", "question-answering": "answer"}.get(task["type"], "classify")
        raise InputError(f"this folder is a fine-tuned {task['type']} model, which cannot {what}; use {use}")
    return task


def classify(model: torch.nn.Module, tokenizer: Any, inputs: Any, top_k: int | None = 1,
             batch_size: int = 32, windows: WindowSpec | dict | bool | None = None,
             windows_used: list[int] | None = None) -> Any:
    """Labels (classification) or values (regression) for a text, a ``(text, pair)`` tuple, or a list."""
    task = _need(model, ("classification", "regression"), "classify texts")
    single = isinstance(inputs, (str, tuple))
    items = [inputs] if single else list(inputs)
    if not items:
        raise InputError("no inputs given; pass a text or a list of texts")
    if top_k is not None and top_k < 1:
        raise InputError(f"top_k must be >= 1 or None, got {top_k}")
    spec = task_windows(task, windows)
    pairs = [item if isinstance(item, tuple) and len(item) == 2 else (item, None) for item in items]
    rows, groups = sequence_rows(tokenizer, pairs, [f"input {i}" for i in range(len(items))],
                                 max_input_length(model.config, tokenizer), spec)
    logits = pooled_logits(batched_logits(model, rows, tokenizer.pad_id, batch_size), groups,
                           spec.pool if spec else "mean")
    if windows_used is not None:
        windows_used.extend(hi - lo for lo, hi in groups)
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


def _tag_result(tags: list[str], scores: list[float], words: list[str], spans: list[tuple[int, int]] | None,
                text: str | None, aggregate: bool) -> list[dict[str, Any]]:
    if not aggregate:
        return [{"word": w, "entity": t, "score": s, "start": sp[0] if sp else None, "end": sp[1] if sp else None}
                for w, t, s, sp in zip(words, tags, scores, spans or [None] * len(words))]
    entities = []
    for kind, a, b in bio_spans(tags):
        start, end = (spans[a][0], spans[b - 1][1]) if spans else (None, None)
        word = text[start:end] if text is not None else " ".join(words[a:b])
        entities.append({"entity_group": kind, "score": sum(scores[a:b]) / (b - a), "word": word,
                         "start": start, "end": end})
    return entities


def tag(model: torch.nn.Module, tokenizer: Any, inputs: Any, aggregate: bool = True,
        batch_size: int = 32, windows: WindowSpec | dict | bool | None = None,
        windows_used: list[int] | None = None) -> Any:
    """Entities (or per-word tags) for a text, or a list of texts and/or pre-split word lists."""
    task = _need(model, ("tagging",), "tag texts")
    single = isinstance(inputs, str)  # a list of strings is a list of texts; pre-split: a list of lists
    items = [inputs] if single else list(inputs)
    if not items:
        raise InputError("no inputs given; pass a text or a list of texts")
    spec = task_windows(task, windows)
    max_length = max_input_length(model.config, tokenizer)
    rows: list[list[int]] = []
    sentences = []  # (rows [lo, hi), window spans or None, first sub-tokens, words, char spans, text)
    for i, item in enumerate(items):
        if isinstance(item, str):
            (words, spans), text = split_words(item), item
        elif isinstance(item, (list, tuple)) and all(isinstance(w, str) for w in item):
            words, spans, text = list(item), None, None
        else:
            raise InputError(f"input {i} is {type(item).__name__}; pass a text or a list of words")
        lo = len(rows)
        if spec is None:
            ids, first = encode_words(tokenizer, words, max_length, f"input {i}")
            rows.append(ids)
            windows_spans = None
        else:
            more, windows_spans, first = encode_words_windows(tokenizer, words, max_length, spec, f"input {i}")
            rows.extend(more)
        sentences.append(((lo, len(rows)), windows_spans, first, words, spans, text))
    logits = batched_logits(model, rows, tokenizer.pad_id, batch_size)
    results = []
    for (lo, hi), windows_spans, first, words, spans, text in sentences:
        merged, where = merge_word_logits(logits[lo:hi], windows_spans, first)
        tags, scores = word_tags(merged, where, task["labels"])
        results.append(_tag_result(tags, scores, words, spans, text, aggregate))
        if windows_used is not None:
            windows_used.append(hi - lo)
    return results[0] if single else results


def best_answer(window_logits: list[torch.Tensor], qa: QAWindows, context: str, max_answer_length: int,
                null_threshold: float | None) -> dict[str, Any]:
    """The best answer span of one question over its windows' logits ``[T, 2]`` (start, end).

    A span (i, j) of context tokens, i <= j < i + ``max_answer_length``, scores start[i] + end[j] in its
    window; the best over all windows wins. Its ``score`` is p_start(i) * p_end(j), each a softmax over the
    window's [CLS] and context tokens (Hugging Face's pipeline). The null score of a window is
    start[CLS] + end[CLS]; with ``null_threshold`` not None the answer is empty (v2.0's "no answer",
    start = end = 0) when the smallest null score over the windows exceeds the best span's by more than
    ``null_threshold`` (Hugging Face's ``null_score_diff_threshold``). None: always a span.
    """
    best: tuple[float, int, int, int, float] | None = None  # (logit sum, window, i, j, probability)
    null: tuple[float, float] | None = None                 # (logit sum, probability)
    for w, ((a, b), x) in enumerate(zip(qa.spans, window_logits)):
        n = b - a
        keep = torch.cat([x[:1], x[qa.first:qa.first + n]]).float()   # [1 + n, 2]: [CLS], context
        probs = keep.softmax(0)
        start, end = keep[1:, 0], keep[1:, 1]
        scores = start[:, None] + end[None, :]                          # [n, n]: span (i, j)
        i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        scores = scores.masked_fill((j < i) | (j - i >= max_answer_length), -torch.inf)
        flat = int(scores.argmax())
        si, sj = divmod(flat, n)
        total = float(scores[si, sj])
        if best is None or total > best[0]:
            best = (total, w, a + si, a + sj, float(probs[1 + si, 0] * probs[1 + sj, 1]))
        window_null = float(keep[0, 0] + keep[0, 1])
        if null is None or window_null < null[0]:
            null = (window_null, float(probs[0, 0] * probs[0, 1]))
    assert best is not None and null is not None
    if null_threshold is not None and null[0] - best[0] > null_threshold:
        return {"answer": "", "score": null[1], "start": 0, "end": 0}
    start_char, end_char = qa.offsets[best[2]][0], qa.offsets[best[3]][1]
    return {"answer": context[start_char:end_char], "score": best[4], "start": start_char, "end": end_char}


def _qa_items(inputs: Any) -> tuple[list[tuple[str, str]], bool]:
    single = isinstance(inputs, (dict, tuple))
    items = [inputs] if single else list(inputs)
    if not items:
        raise InputError("no inputs given; pass {'question': ..., 'context': ...} or a list of them")
    pairs = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and "question" in item and "context" in item:
            pairs.append((item["question"], item["context"]))
        elif isinstance(item, tuple) and len(item) == 2:
            pairs.append(item)
        else:
            raise InputError(f"input {i} is not a {{'question', 'context'}} object or a (question, context) pair")
    return pairs, single


def answer(model: torch.nn.Module, tokenizer: Any, inputs: Any, max_answer_length: int | None = None,
           null_threshold: float | None | str = "folder", batch_size: int = 32,
           windows: WindowSpec | dict | bool | None = None, windows_used: list[int] | None = None,
           max_length: int | None = None) -> Any:
    """Answers ``{"answer", "score", "start", "end"}`` (character offsets into the context) for
    ``{"question", "context"}`` (or a ``(question, context)`` tuple), or a list of them. Contexts of any
    length are read in windows of ``max_length`` tokens (None: the model's maximum; a server passes its
    own bound). ``max_answer_length`` None and ``null_threshold="folder"`` take the folder's settings
    (see ``best_answer``)."""
    task = _need(model, ("question-answering",), "answer questions")
    pairs, single = _qa_items(inputs)
    spec = task_windows(task, windows) or WindowSpec()
    longest = task.get("max_answer_length", DEFAULT_MAX_ANSWER_LENGTH) if max_answer_length is None \
        else max_answer_length
    if longest < 1:
        raise InputError(f"max_answer_length must be >= 1, got {longest}")
    threshold = task.get("null_threshold") if null_threshold == "folder" else null_threshold
    if threshold is not None and math.isnan(threshold):
        raise InputError("null_threshold must be a number (inf: never answer ''), got nan")
    rows: list[list[int]] = []
    encoded = []
    for i, (question, context) in enumerate(pairs):
        qa = encode_qa(tokenizer, question, context, max_length or max_input_length(model.config, tokenizer), spec,
                       f"input {i}")
        encoded.append((len(rows), qa))
        rows.extend(qa.rows)
    logits = batched_logits(model, rows, tokenizer.pad_id, batch_size)
    results = []
    for (lo, qa), (_, context) in zip(encoded, pairs):
        results.append(best_answer(logits[lo:lo + len(qa.rows)], qa, context, longest, threshold))
        if windows_used is not None:
            windows_used.append(len(qa.rows))
    return results[0] if single else results
