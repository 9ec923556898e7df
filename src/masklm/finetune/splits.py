"""Fine-tuning data as model rows, and a task's metrics on them: what training, validation and
``masklm eval test`` share.

A ``Split`` is one file, encoded for the model: its rows (one per window), each example's rows, the
training targets and the gold answers the metrics compare with. ``evaluate`` reads a fine-tuned model's
outputs on a split the way ``masklm predict`` does (pooled windows, word tags from the most central window,
the best answer span) and scores them (``finetune.metrics``). ``labelled_split`` builds a split from a labelled
file for a fine-tuned folder, with the columns, labels and windows its task block recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from masklm.errors import DataError
from masklm.finetune import data as fdata
from masklm.finetune.encode import encode_qa, encode_words, encode_words_windows
from masklm.finetune.metrics import classification_metrics, entity_scores, qa_metrics, regression_metrics
from masklm.finetune.predict import (
    batched_logits,
    best_answer,
    merge_word_logits,
    pooled_logits,
    sequence_rows,
    sequence_values,
    task_windows,
    word_tags,
)
from masklm.inference.batching import WindowSpec
from masklm.tokenizer import unknown_note


@dataclass
class Split:
    """One file, encoded. A training unit is an example (sequence tasks: ``targets`` per example, its
    windows' logits pooled) or a row (tagging, question answering: ``targets`` per row)."""

    rows: list[list[int]] = field(default_factory=list)       # model inputs, one per window
    targets: list[Any] = field(default_factory=list)          # class index, standardised float, label row, (s, e)
    gold: list[Any] = field(default_factory=list)             # per example: class, raw float, word tags, answers
    groups: list[tuple[int, int]] = field(default_factory=list)  # per example: its rows [lo, hi)
    firsts: list[list[int]] = field(default_factory=list)     # tagging: first sub-token of each word
    spans: list[Any] = field(default_factory=list)            # tagging: window spans (None: no windows); QA: QAWindows
    contexts: list[str] = field(default_factory=list)         # question answering
    unanswerable: int = 0                                     # QA: gold answers no window holds whole
    multiline: list[str] = field(default_factory=list)        # CSV/TSV: "file:first-last" of records over several lines

    def notes(self, file: str, unk_id: int) -> list[str]:
        """What a reader of ``file`` should know: records that spanned several lines (a stray quote joins
        rows), and a share of [UNK] tokens past ``tokenizer.UNKNOWN_ADVICE_RATE``."""
        notes = [fdata.multiline_note(self.multiline, len(self.groups))] if self.multiline else []
        unknown = sum(row.count(unk_id) for row in self.rows)
        return notes + [n for n in [unknown_note(unknown, sum(map(len, self.rows)), file)] if n]

    def windows(self) -> dict[str, int]:
        """Examples, windows, and the most windows of one example."""
        return {"examples": len(self.groups), "windows": len(self.rows),
                "max_per_example": max((hi - lo for lo, hi in self.groups), default=0)}


def tagging_split(sentences: list[fdata.TaggedSentence], index: dict[str, int], tokenizer: Any,
                  max_length: int, spec: WindowSpec | None, train_file: str) -> Split:
    """Each window a row whose targets are the tags (``index``) at the first sub-token of each word it holds;
    a tag outside ``index`` is a DataError naming the sentence and ``train_file``."""
    split = Split()
    for s in sentences:
        unknown = [t for t in s.tags if t not in index]
        if unknown:
            raise DataError(f"{s.where}: tag {unknown[0]!r} does not occur in the training file "
                            f"{train_file}; the model can only learn tags it has seen")
        if spec is None:
            ids, first = encode_words(tokenizer, s.words, max_length, s.where)
            rows, spans = [ids], None
        else:
            rows, spans, first = encode_words_windows(tokenizer, s.words, max_length, spec, s.where)
        split.groups.append((len(split.rows), len(split.rows) + len(rows)))
        for ids, span in zip(rows, spans or [None]):
            row = [-100] * len(ids)
            for pos, t in zip(first, s.tags):
                if pos >= 0 and span is None:
                    row[pos] = index[t]
                elif pos >= 0 and span[0] <= pos < span[1]:
                    row[pos - span[0] + 1] = index[t]  # +1: the window's [CLS]
            split.rows.append(ids)
            split.targets.append(row)
        split.gold.append(s.tags)
        split.firsts.append(first)
        split.spans.append(spans)
    return split


def qa_split(examples: list[fdata.QAExample], tokenizer: Any, max_length: int, spec: WindowSpec) -> Split:
    """Each window a row whose target is the first answer's (start, end) row positions when the window
    holds all of it, else (0, 0): [CLS], "no answer here"."""
    split = Split()
    for e in examples:
        qa = encode_qa(tokenizer, e.question, e.context, max_length, spec, e.where)
        tokens = None
        if e.answers:
            text, start = e.answers[0]
            tokens = qa.token_span(start, start + len(text))
            if tokens is None:
                raise DataError(f"{e.where}: the answer {text!r} covers no token of the context; fix the answer")
        held = False
        for a, b in qa.spans:
            inside = tokens is not None and a <= tokens[0] and tokens[1] < b
            held |= inside
            split.targets.append((qa.first + tokens[0] - a, qa.first + tokens[1] - a) if inside else (0, 0))
        split.unanswerable += int(tokens is not None and not held)
        split.groups.append((len(split.rows), len(split.rows) + len(qa.rows)))
        split.rows.extend(qa.rows)
        split.gold.append([t for t, _ in e.answers])
        split.spans.append(qa)
        split.contexts.append(e.context)
    return split


def sequence_split(examples: list[fdata.SequenceExample], tokenizer: Any, max_length: int,
                   spec: WindowSpec | None, encode_target: Callable[[Any, str], Any]) -> Split:
    """Each example its rows (one per window), its target ``encode_target(label, where)`` and its gold label."""
    split = Split()
    split.rows, split.groups = sequence_rows(tokenizer, [(e.text, e.pair) for e in examples],
                                             [e.where for e in examples], max_length, spec)
    split.targets = [encode_target(e.label, e.where) for e in examples]
    split.gold = [e.label for e in examples]
    split.multiline = [e.where for e in examples if e.lines > 1]
    return split


def evaluate(model: torch.nn.Module, split: Split, pad_id: int, batch_size: int) -> dict[str, float]:
    """The task's metrics of ``model`` on ``split``."""
    logits = batched_logits(model, split.rows, pad_id, batch_size)
    task = model.task
    if task["type"] == "question-answering":
        predicted = [best_answer(logits[lo:hi], qa, context, task["max_answer_length"],
                                 task["null_threshold"])["answer"]
                     for (lo, hi), qa, context in zip(split.groups, split.spans, split.contexts)]
        return qa_metrics(split.gold, predicted)
    if task["type"] == "tagging":
        predicted = []
        for (lo, hi), spans, first in zip(split.groups, split.spans, split.firsts):
            merged, where = merge_word_logits(logits[lo:hi], spans, first)
            predicted.append(word_tags(merged, where, task["labels"])[0])
        return entity_scores(split.gold, predicted)
    pooled = pooled_logits(logits, split.groups, task.get("windows", {}).get("pool", "mean"))
    if task["type"] == "regression":
        return regression_metrics(split.gold, sequence_values(model, pooled))
    return classification_metrics(split.gold, [task["labels"][int(x.argmax())] for x in pooled])


def labelled_split(task: dict[str, Any], tokenizer: Any, path: str, max_length: int,
               columns: tuple[str | None, str | None, str | None] = (None, None, None), model: str = "") -> Split:
    """A labelled file read for a fine-tuned folder's ``task`` block: with the columns it was fine-tuned
    with (``columns``: text, pair and label column names that override them), its labels (a label or tag
    it was never fine-tuned on is a DataError naming the line), and its windows. ``model`` names the folder
    in messages."""
    spec, kind = task_windows(task, None), task["type"]
    text, pair, label = columns
    if kind == "question-answering":
        return qa_split(fdata.read_qa_file(path), tokenizer, max_length, spec)
    labels = task["labels"]
    if kind == "tagging":
        sentences = fdata.read_tagging_file(path, text or "tokens", label or "tags")
        return tagging_split(sentences, {t: i for i, t in enumerate(labels)}, tokenizer, max_length, spec,
                             f"of {model}")
    examples = fdata.read_sequence_file(path, text or task.get("text_column", "text"),
                                        pair or task.get("text_pair_column"), label or task.get("label_column", "label"),
                                        regression=kind == "regression")
    index = {x: i for i, x in enumerate(labels)}

    def target(y: Any, where: str) -> Any:  # only checked here: evaluate compares the gold labels themselves
        if kind == "classification" and y not in index:
            raise DataError(f"{where}: label {y!r} is not one {model} was fine-tuned on ({', '.join(labels)})")
        return index.get(y, 0.0)
    return sequence_split(examples, tokenizer, max_length, spec, target)

