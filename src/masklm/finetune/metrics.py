"""Evaluation metrics for fine-tuning, written with numpy only.

Classification: accuracy, macro-F1 (the unweighted mean of per-class F1 over the classes that occur
in the gold labels or the predictions, as scikit-learn does) and the Matthews correlation coefficient
(Gorodkin's multiclass R_K, which is the usual MCC for two classes). Regression: Pearson's r and
Spearman's rho (Pearson on average ranks, so ties share a rank). Tagging: entity-level precision,
recall and F1 over BIO spans, micro-averaged, with conlleval's chunking rules (see :func:`bio_spans`).

Degenerate cases give 0.0 instead of NaN (a constant prediction has no correlation), so early
stopping can always compare two numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def accuracy(gold: Sequence[Any], pred: Sequence[Any]) -> float:
    """Fraction of positions where ``pred`` equals ``gold``."""
    g, p = np.asarray(gold), np.asarray(pred)
    return float((g == p).mean()) if len(g) else 0.0


def macro_f1(gold: Sequence[Any], pred: Sequence[Any]) -> float:
    """Unweighted mean of per-class F1 over the classes seen in ``gold`` or ``pred``."""
    g, p = np.asarray(gold), np.asarray(pred)
    classes = np.union1d(g, p)
    if classes.size == 0:
        return 0.0
    scores = []
    for c in classes:
        tp = float(np.sum((g == c) & (p == c)))
        fp = float(np.sum((g != c) & (p == c)))
        fn = float(np.sum((g == c) & (p != c)))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(scores))


def mcc(gold: Sequence[Any], pred: Sequence[Any]) -> float:
    """Matthews correlation coefficient (multiclass R_K); 0.0 when it is undefined."""
    g, p = np.asarray(gold), np.asarray(pred)
    classes = np.union1d(g, p)
    index = {c: i for i, c in enumerate(classes.tolist())}
    k = len(classes)
    confusion = np.zeros((k, k), dtype=np.float64)
    for a, b in zip(g.tolist(), p.tolist()):
        confusion[index[a], index[b]] += 1
    t = confusion.sum(axis=1)  # times each class truly occurred
    q = confusion.sum(axis=0)  # times each class was predicted
    c = np.trace(confusion)
    s = confusion.sum()
    denominator = np.sqrt((s * s - q @ q) * (s * s - t @ t))
    return float((c * s - t @ q) / denominator) if denominator > 0 else 0.0


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's correlation; 0.0 when either side is constant."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(a) < 2:
        return 0.0
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / denominator) if denominator > 0 else 0.0


def rankdata(x: Sequence[float]) -> np.ndarray:
    """1-based ranks; tied values share the mean of their ranks."""
    a = np.asarray(x, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a), dtype=np.float64)
    sorted_a = a[order]
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and sorted_a[j + 1] == sorted_a[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson on average ranks)."""
    return pearson(rankdata(x), rankdata(y))


def bio_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entity spans ``(type, start, end)`` (end exclusive) of a BIO tag sequence, conlleval-style.

    A span starts at ``B-X``, or at ``I-X`` that does not continue a span of type X (after ``O``
    or another type); it goes on over the ``I-X`` that follow.
    """
    spans = []
    current: list[Any] | None = None
    for i, tag in enumerate(tags):
        prefix, kind = (tag[0], tag[2:]) if tag != "O" else ("O", "")
        if current is not None and (prefix != "I" or kind != current[0]):
            spans.append((current[0], current[1], i))
            current = None
        if prefix in ("B", "I") and current is None:
            current = [kind, i]
    if current is not None:
        spans.append((current[0], current[1], len(tags)))
    return spans


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro-averaged entity precision, recall and F1 over sentences: a span counts when its type,
    start and end all match."""
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, pred):
        gs, ps = set(bio_spans(g)), set(bio_spans(p))
        tp += len(gs & ps)
        n_gold += len(gs)
        n_pred += len(ps)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"entity_precision": precision, "entity_recall": recall, "entity_f1": f1}


def classification_metrics(gold: Sequence[Any], pred: Sequence[Any]) -> dict[str, float]:
    """``accuracy``, ``macro_f1`` and ``mcc``."""
    return {"accuracy": accuracy(gold, pred), "macro_f1": macro_f1(gold, pred), "mcc": mcc(gold, pred)}


def regression_metrics(gold: Sequence[float], pred: Sequence[float]) -> dict[str, float]:
    """``pearson``, ``spearman`` and ``mse``."""
    g, p = np.asarray(gold, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    return {"pearson": pearson(g, p), "spearman": spearman(g, p), "mse": float(np.mean((g - p) ** 2))}


# The metric each task's early stopping watches by default (higher is better for all of them).
DEFAULT_METRIC = {"classification": "accuracy", "regression": "pearson", "tagging": "entity_f1"}
TASK_METRICS = {
    "classification": ("accuracy", "macro_f1", "mcc"),
    "regression": ("pearson", "spearman"),
    "tagging": ("entity_f1", "entity_precision", "entity_recall"),
}
