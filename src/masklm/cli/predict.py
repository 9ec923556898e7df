"""``masklm predict``: labels, values or entities from a fine-tuned model folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from masklm.cli.score import read_texts
from masklm.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict with a fine-tuned model (labels, values or entities)",
                       description="Run a folder written by 'masklm finetune'. Texts come from the command "
                                   "line or --input: .txt (one per line), .csv/.tsv/.jsonl (the text and "
                                   "pair columns the model was trained with; for tagging, .jsonl \"tokens\" "
                                   "lists or \"text\"), or - for stdin lines.")
    p.add_argument("texts", nargs="*", help="texts")
    p.add_argument("--model", required=True, help="fine-tuned model folder")
    p.add_argument("--input", help="input file (see above)")
    p.add_argument("--json", action="store_true", help="one JSON object per input on stdout")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    p.set_defaults(func=run)


def _read_inputs(path: str, task: dict[str, Any]) -> list[Any]:
    # lazy: the fine-tuning readers load only when this command runs
    from masklm.finetune.data import read_sequence_file, read_tagging_file

    suffix = Path(path).suffix.lower()
    if task["type"] == "tagging" and suffix == ".jsonl":
        first = Path(path).read_text(encoding="utf-8").lstrip()[:2000]
        if '"tokens"' in first:
            return [s.words for s in read_tagging_file(path, "tokens", None)]
        return read_texts(path, [])
    if task["type"] != "tagging" and suffix in (".csv", ".tsv", ".jsonl"):
        examples = read_sequence_file(path, task.get("text_column", "text"), task.get("text_pair_column"), None)
        return [(e.text, e.pair) if e.pair is not None else e.text for e in examples]
    return read_texts(path, [])


def run(args: argparse.Namespace) -> int:
    from masklm.inference.pipeline import load  # lazy: the model stack loads only when this command runs

    pipe = load(args.model, device=args.device)
    task = getattr(pipe.model, "task", None)
    if task is None:
        raise InputError(f"{args.model} is not a fine-tuned model (no task head); fine-tune it with "
                         "'masklm finetune', or use fill-mask / score / embed")
    if args.input is not None and args.input != "-":
        if args.texts:
            raise InputError("give texts either on the command line or with --input, not both")
        inputs = _read_inputs(args.input, task)
    else:
        inputs = read_texts(args.input, args.texts)
    if not inputs:
        raise InputError("no texts given; pass them as arguments or with --input FILE")
    if task["type"] == "tagging":
        results = pipe.tag(inputs, batch_size=args.batch_size)
    else:
        results = pipe.classify(inputs, batch_size=args.batch_size)
    for item, result in zip(inputs, results):
        text = " ".join(item) if isinstance(item, list) else item
        if args.json:
            record = {"text": text[0], "text_pair": text[1]} if isinstance(text, tuple) else {"text": text}
            record.update(result if isinstance(result, dict) else {"entities": result})
            print(json.dumps(record, ensure_ascii=False))
        elif task["type"] == "tagging":
            shown = "; ".join(f"{e['entity_group']}: {e['word']}" for e in result)
            print(f"{text}\t{shown}")
        elif task["type"] == "regression":
            print(f"{result['value']:.6g}\t{text if isinstance(text, str) else chr(9).join(text)}")
        else:
            print(f"{result['label']}\t{result['score']:.4f}\t{text if isinstance(text, str) else chr(9).join(text)}")
    return 0
