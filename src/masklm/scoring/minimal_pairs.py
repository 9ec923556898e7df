"""Minimal-pair evaluation (BLiMP format): does the model prefer the grammatical sentence?

Input: JSONL files, one pair per line, with BLiMP's field names as they are: ``sentence_good``,
``sentence_bad`` and optionally ``UID`` (the paradigm), ``field``, ``linguistics_term``. A file whose
records have no ``UID`` (BabyLM's supplement files) takes the paradigm name from the file name.

Rule (stated in every report): each sentence gets its summed PLL (or the chosen metric and
reduction); a pair is correct iff the good sentence scores *strictly* higher. Ties count as wrong
and are reported, unlike BabyLM 2024's ``argmax``, which silently counts them as right.
Accuracy is given overall (micro, over pairs), as the macro average over paradigms, per field and per
paradigm.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from masklm.data.corpus import jsonl_objects
from masklm.errors import DataError
from masklm.files import atomic_file
from masklm.scoring.pll import check_metric, score_sentences
from masklm.wording import counted


@dataclass
class Pair:
    good: str
    bad: str
    uid: str
    field: str | None = None
    term: str | None = None
    where: str = ""  # "file:line"


def shipped_data() -> list[Path]:
    """The small set shipped in ``masklm/resources/minimal_pairs``: three paradigms of ten pairs each
    (subject-verb, determiner-noun and anaphor agreement), written for masklm as a smoke test of the
    evaluation. They are not BLiMP; pass the BLiMP or BabyLM files for real numbers."""
    folder = Path(str(resources.files("masklm") / "resources" / "minimal_pairs"))
    return sorted(folder.glob("*.jsonl"))


def resolve_paths(paths: list[str | Path] | None) -> list[Path]:
    """Files as given; a folder means its ``*.jsonl`` files; nothing means the shipped set."""
    if not paths:
        return shipped_data()
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.jsonl"))
            if not found:
                raise DataError(f"{p} holds no .jsonl files; pass BLiMP-format .jsonl files or a folder of them")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"minimal-pair file {p} does not exist; check the path")
    return files


def read_pairs(paths: list[str | Path] | None) -> list[Pair]:
    """All pairs of ``paths`` (see ``resolve_paths``); a malformed line is a DataError naming file and line."""
    pairs: list[Pair] = []
    for path in resolve_paths(paths):
        count = 0
        for where, record in jsonl_objects(path, "a JSON object with sentence_good and sentence_bad"):
            for key in ("sentence_good", "sentence_bad"):
                value = record.get(key)
                if not isinstance(value, str) or not value.strip():
                    raise DataError(f"{where}: {key!r} is missing or not a non-empty string; add it")
            for key in ("UID", "field", "linguistics_term"):  # grouping keys: names, not structures
                if not isinstance(record.get(key), (str, type(None))):
                    raise DataError(f"{where}: {key!r} must be a string (a name), got {record[key]!r}; fix it "
                                    "or leave it out")
            uid = record.get("UID") or path.name.removesuffix(".jsonl")
            pairs.append(Pair(record["sentence_good"], record["sentence_bad"], str(uid),
                              record.get("field"), record.get("linguistics_term"), where))
            count += 1
        if count == 0:
            raise DataError(f"{path} holds no pairs; add lines with sentence_good and sentence_bad")
    return pairs


def rule_text(metric: str, reduction: str) -> str:
    what = {"sum": "summed", "mean": "mean per-token"}[reduction]
    return (f"each sentence scored by {what} {metric} log-probability; a pair is correct iff "
            "sentence_good scores strictly higher than sentence_bad (ties count as wrong)")


def _tally(rows: list[dict[str, Any]]) -> dict[str, Any]:
    correct = sum(r["correct"] for r in rows)
    return {"pairs": len(rows), "correct": correct, "ties": sum(r["tie"] for r in rows),
            "accuracy": correct / len(rows)}


def evaluate(pipe, pairs: list[Pair], metric: str | None = None, reduction: str = "sum",
             batch_tokens: int | None = None, details: bool = False) -> dict[str, Any]:
    """Score every pair with ``pipe`` and tally accuracy overall, per field and per paradigm.

    ``metric`` defaults to ``pipe.default_metric`` (``mntp`` for models trained with it, else ``pll``).

    Returns ``{rule, metric, reduction, pairs, correct, ties, accuracy, macro_accuracy, by_field,
    by_paradigm}`` (plus ``details``: one row per pair, when asked).
    """
    metric = pipe.resolve_metric(metric)
    check_metric(metric, reduction)
    if not pairs:
        raise DataError("no minimal pairs to evaluate; pass BLiMP-format .jsonl files")
    # Each distinct sentence once, all in one call so the copies of all of them share batches.
    unique = list(dict.fromkeys(s for p in pairs for s in (p.good, p.bad)))
    encoded = dict(zip(unique, pipe.tokenizer.encode_batch(unique)))
    special, unk = set(pipe.tokenizer.special_ids) - {pipe.tokenizer.unk_id}, pipe.tokenizer.unk_id
    for p in pairs:  # what no score can be given for, named by its file and line (nothing is truncated)
        for key, text in (("sentence_good", p.good), ("sentence_bad", p.bad)):
            ids = encoded[text].ids
            if len(ids) > pipe.max_length:
                raise DataError(f"{p.where}: {key} is {len(ids)} tokens long, more than the model's "
                                f"maximum of {pipe.max_length}; shorten it or leave the pair out")
            if all(t == unk for t in ids if t not in special):
                raise DataError(f"{p.where}: {key} {text[:40]!r} is all [UNK] to this tokenizer (text it cannot "
                                "spell): nothing in it can be scored; leave the pair out")
    unknown = {text: enc.ids.count(pipe.tokenizer.unk_id) for text, enc in encoded.items()}
    scores = dict(zip(unique, score_sentences(pipe.model, pipe.tokenizer, unique, metric, reduction,
                                              batch_tokens=batch_tokens, max_length=pipe.max_length)))
    rows = []
    for p in pairs:
        good, bad = scores[p.good], scores[p.bad]
        rows.append({"uid": p.uid, "field": p.field, "linguistics_term": p.term,
                     "sentence_good": p.good, "sentence_bad": p.bad, "score_good": good,
                     "score_bad": bad, "correct": good > bad, "tie": good == bad})
    groups: dict[str, list[dict[str, Any]]] = {}
    fields: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["uid"], []).append(r)
        if r["field"]:
            fields.setdefault(r["field"], []).append(r)
    by_paradigm = {uid: {"field": g[0]["field"], "linguistics_term": g[0]["linguistics_term"], **_tally(g)}
                   for uid, g in groups.items()}
    by_field = {field: _tally(g) for field, g in fields.items()}
    # [UNK] tokens are not scored: a pair whose sentences differ only there ties (counted, not silent)
    result = {"rule": rule_text(metric, reduction), "metric": metric, "reduction": reduction, **_tally(rows),
              "pairs_with_unknown_tokens": sum(1 for p in pairs if unknown[p.good] + unknown[p.bad]),
              "pairs_without_field": sum(1 for p in pairs if not p.field),
              "macro_accuracy": sum(v["accuracy"] for v in by_paradigm.values()) / len(by_paradigm),
              "by_field": by_field, "by_paradigm": by_paradigm}
    if details:
        result["details"] = rows
    return result


def format_report(result: dict[str, Any]) -> str:
    """A plain-text table: the rule, overall, per field, per paradigm (accuracy in %)."""
    lines = [f"rule: {result['rule']}",
             f"overall: {100 * result['accuracy']:.1f}% ({result['correct']}/{result['pairs']} pairs, "
             f"{result['ties']} ties); macro average over {len(result['by_paradigm'])} paradigms: "
             f"{100 * result['macro_accuracy']:.1f}%"]
    width = max([len(k) for k in result["by_paradigm"]] + [len(k) for k in result["by_field"]] + [8])
    if result.get("pairs_with_unknown_tokens"):
        n = result["pairs_with_unknown_tokens"]
        lines.append(f"{counted(n, 'pair')} {'holds' if n == 1 else 'hold'} [UNK] tokens (text the tokenizer cannot "
                     "spell), which are not scored: a pair differing only there ties")
    if result["by_field"]:
        lines += ["", f"{'field':<{width}}  accuracy  pairs  ties"]
        lines += [f"{k:<{width}}  {100 * v['accuracy']:7.1f}%  {v['pairs']:5d}  {v['ties']:4d}"
                  for k, v in result["by_field"].items()]
        if result.get("pairs_without_field"):
            lines.append(f"({counted(result['pairs_without_field'], 'pair')} without a field: in no row above)")
    lines += ["", f"{'paradigm':<{width}}  accuracy  pairs  ties"]
    lines += [f"{k:<{width}}  {100 * v['accuracy']:7.1f}%  {v['pairs']:5d}  {v['ties']:4d}"
              for k, v in result["by_paradigm"].items()]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """A bar chart of per-paradigm accuracy (with the 50% chance line) written as PNG to ``path``."""
    import matplotlib  # lazy: slow to import, and only --plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above, and after choosing the Agg backend

    path = Path(path)
    names = list(result["by_paradigm"])
    values = [100 * result["by_paradigm"][k]["accuracy"] for k in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(names) + 2), 4.5))
    try:
        ax.bar(range(len(names)), values, color="tab:blue")
        ax.axhline(50, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"minimal pairs: {result['metric']} ({result['reduction']}), "
                     f"overall {100 * result['accuracy']:.1f}%", fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        with atomic_file(path) as tmp:  # never leave half a PNG behind
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path
