"""``masklm predict``: labels, values, entities or answers from a fine-tuned model folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from masklm.cli.finetune import add_window_flags, report_windows, window_spec
from masklm.cli.score import read_texts
from masklm.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict with a fine-tuned model (labels, values, entities or answers)",
                       description="Run a folder written by 'masklm finetune'. Texts come from the command "
                                   "line or --input: .txt (one per line), .csv/.tsv/.jsonl (the text and "
                                   "pair columns the model was trained with; for tagging, .jsonl \"tokens\" "
                                   "lists or \"text\"), or - for stdin lines. A question-answering folder "
                                   "answers --question with --context, or --input .jsonl with {\"question\", "
                                   "\"context\"} per line (or a SQuAD .json), as {answer, score, start, end} "
                                   "(character offsets into the context).")
    p.add_argument("texts", nargs="*", help="texts")
    p.add_argument("--model", required=True, help="fine-tuned model folder")
    p.add_argument("--input", help="input file (see above)")
    p.add_argument("--json", action="store_true", help="one JSON object per input on stdout")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    add_window_flags(p, "Default: as the folder was fine-tuned (an input over the maximum is an error if it "
                        "was fine-tuned without windows; question answering always uses windows).")
    p.add_argument("--text-column", help=".csv/.tsv/.jsonl --input: the text column (default: the one the folder "
                                         "was fine-tuned with)")
    p.add_argument("--text-pair-column", help=".csv/.tsv/.jsonl --input: the second text's column, for a folder "
                                              "fine-tuned on pairs (default: the one it was fine-tuned with)")
    p.add_argument("--question", help="question answering: the question (with --context)")
    p.add_argument("--context", help="question answering: the context to find the answer in")
    p.add_argument("--max-answer-length", type=int,
                   help="question answering: longest answer in tokens (default: the folder's, 30)")
    p.add_argument("--null-threshold", type=float,
                   help="question answering: answer '' (no answer) when the [CLS] score beats the best span's "
                        "by more than this (default: the folder's: 0.0 if trained with unanswerable questions, "
                        "else never; 'inf' never answers '')")
    p.set_defaults(func=run)


def _read_inputs(path: str, task: dict[str, Any], args: argparse.Namespace) -> list[Any]:
    # lazy: the fine-tuning readers load only when this command runs
    from masklm.finetune.data import multiline_note, read_qa_file, read_sequence_file, read_tagging_file

    suffix = Path(path).suffix.lower()
    if task["type"] == "question-answering":
        return [{"question": e.question, "context": e.context, "id": e.id} for e in read_qa_file(path, False)]
    if task["type"] == "tagging" and suffix == ".jsonl":
        first = Path(path).read_text(encoding="utf-8").lstrip()[:2000]
        if '"tokens"' in first:
            return [s.words for s in read_tagging_file(path, "tokens", None)]
        return read_texts(path, [])
    if task["type"] != "tagging" and suffix in (".csv", ".tsv", ".jsonl"):
        pair = args.text_pair_column or task.get("text_pair_column")
        if pair and not task.get("text_pair_column"):
            raise InputError("--text-pair-column: this folder was fine-tuned on single texts; leave it out")
        examples = read_sequence_file(path, args.text_column or task.get("text_column", "text"), pair, None)
        if multi := [e.where for e in examples if e.lines > 1]:
            print(f"masklm: {multiline_note(multi, len(examples))}", file=sys.stderr)
        return [(e.text, e.pair) if e.pair is not None else e.text for e in examples]
    return read_texts(path, [])


def _inputs(args: argparse.Namespace, task: dict[str, Any]) -> list[Any]:
    qa = task["type"] == "question-answering"
    if (args.question is not None or args.context is not None) and not qa:
        raise InputError(f"--question/--context are for question-answering folders; this one is {task['type']}")
    if args.input is not None and args.input != "-":
        if args.texts or args.question is not None:
            raise InputError("give inputs either on the command line or with --input, not both")
        return _read_inputs(args.input, task, args)
    if qa:
        if args.texts or args.input == "-" or args.question is None or args.context is None:
            raise InputError("a question-answering folder answers --question Q --context C, or --input FILE "
                             "(.jsonl with \"question\" and \"context\", or SQuAD .json)")
        return [{"question": args.question, "context": args.context, "id": None}]
    return read_texts(args.input, args.texts)


def _predict(pipe, task: dict[str, Any], inputs: list[Any], args: argparse.Namespace, counts: list[int]) -> list:
    windows = window_spec(args)
    if task["type"] == "question-answering":
        options: dict[str, Any] = {"max_answer_length": args.max_answer_length}
        if args.null_threshold is not None:
            options["null_threshold"] = args.null_threshold
        return pipe.answer(inputs, batch_size=args.batch_size, windows=windows, windows_used=counts, **options)
    if task["type"] == "tagging":
        return pipe.tag(inputs, batch_size=args.batch_size, windows=windows, windows_used=counts)
    return pipe.classify(inputs, batch_size=args.batch_size, windows=windows, windows_used=counts)


def _print(task: dict[str, Any], item: Any, result: Any, windows: int, as_json: bool) -> None:
    if task["type"] == "question-answering":
        if as_json:
            record = {"id": item["id"]} if item["id"] is not None else {}
            print(json.dumps({**record, "question": item["question"], **result, "windows": windows},
                             ensure_ascii=False))
        else:
            print(f"{result['answer']}\t{result['score']:.4f}\t{item['question']}")
        return
    text = " ".join(item) if isinstance(item, list) else item
    if as_json:
        record = {"text": text[0], "text_pair": text[1]} if isinstance(text, tuple) else {"text": text}
        record.update(result if isinstance(result, dict) else {"entities": result})
        print(json.dumps({**record, "windows": windows}, ensure_ascii=False))
    elif task["type"] == "tagging":
        shown = "; ".join(f"{e['entity_group']}: {e['word']}" for e in result)
        print(f"{text}\t{shown}")
    elif task["type"] == "regression":
        print(f"{result['value']:.6g}\t{text if isinstance(text, str) else chr(9).join(text)}")
    else:
        print(f"{result['label']}\t{result['score']:.4f}\t{text if isinstance(text, str) else chr(9).join(text)}")


def run(args: argparse.Namespace) -> int:
    from masklm.inference.pipeline import load  # lazy: the model stack loads only when this command runs

    pipe = load(args.model, device=args.device)
    task = getattr(pipe.model, "task", None)
    if task is None:
        raise InputError(f"{args.model} is not a fine-tuned model (no task head); fine-tune it with "
                         "'masklm finetune', or use fill-mask / score / embed")
    inputs = _inputs(args, task)
    if not inputs:
        raise InputError("no texts given; pass them as arguments or with --input FILE")
    counts: list[int] = []
    results = _predict(pipe, task, inputs, args, counts)
    for item, result, windows in zip(inputs, results, counts):
        _print(task, item, result, windows, args.json)
    if window_spec(args) is not None or "windows" in task or task["type"] == "question-answering":
        report_windows(counts)
    return 0
