"""Evaluation metrics for fine-tuning, written with numpy only.

Classification: accuracy, macro-F1 (the unweighted mean of per-class F1 over the classes that occur
in the gold labels or the predictions, as scikit-learn does) and the Matthews correlation coefficient
(Gorodkin's multiclass R_K, which is the usual MCC for two classes). Regression: Pearson's r and
Spearman's rho (Pearson on average ranks, so ties share a rank). Tagging: entity-level precision,
recall and F1 over BIO spans, micro-averaged, with conlleval's chunking rules (see :func:`bio_spans`).
Question answering: SQuAD's exact match and F1 (see :func:`qa_metrics`).

Degenerate cases give 0.0 instead of NaN (a constant prediction has no correlation), so early
stopping can always compare two numbers.
"""

from __future__ import annotations

import re
import string
from collections import Counter
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
DEFAULT_METRIC = {"classification": "accuracy", "regression": "pearson", "tagging": "entity_f1",
                  "question-answering": "f1"}
TASK_METRICS = {
    "classification": ("accuracy", "macro_f1", "mcc"),
    "regression": ("pearson", "spearman"),
    "tagging": ("entity_f1", "entity_precision", "entity_recall"),
    "question-answering": ("f1", "exact_match"),
}


# ---- extractive question answering: SQuAD's exact match and F1 ---------------------------------------
#
# As the official SQuAD evaluation scripts define them (v1.1 and v2.0 agree but on empty answers, where
# v2.0's rule is used: an empty prediction matches an empty gold answer, and nothing else). An answer is
# normalised by lowercasing, removing ASCII punctuation, removing the articles a/an/the and collapsing
# whitespace; F1 is over the bag of normalised words; a question's score is its best over the gold
# answers (a question without gold answers has the one gold answer "", v2.0's no-answer).

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no a/an/the, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def answer_f1(prediction: str, gold: str) -> float:
    """F1 over the normalised words of ``prediction`` and ``gold`` (both empty: 1.0; one empty: 0.0)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def qa_metrics(gold: Sequence[Sequence[str]], pred: Sequence[str]) -> dict[str, float]:
    """Mean ``exact_match`` and ``f1`` (fractions; SQuAD's script prints them x100) of predictions
    against each question's gold answers (an empty list: no answer)."""
    if not gold:
        return {"exact_match": 0.0, "f1": 0.0}
    em = f1 = 0.0
    for answers, p in zip(gold, pred):
        answers = list(answers) or [""]
        em += max(exact_match(p, a) for a in answers)
        f1 += max(answer_f1(p, a) for a in answers)
    return {"exact_match": em / len(gold), "f1": f1 / len(gold)}
