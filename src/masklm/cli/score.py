"""``masklm score``: sentence log-probabilities (PLL, PLL-word-l2r, causal, MNTP)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from masklm.cli.model_flags import add_model_flags, load_pipeline
from masklm.data.corpus import jsonl_objects
from masklm.errors import DataError, InputError
from masklm.scoring.pll import METRICS
from masklm.tokenizer import unknown_counts, unscored_note
from masklm.wording import counted


def read_texts(path: str | None, positional: list[str]) -> list[str]:
    """Texts from ``--input`` (``.txt``: one per non-blank line; ``.jsonl``: the ``text`` field; ``-``:
    stdin lines) or from the command line, not both. An input that holds no text is an error naming it."""
    if path is None:
        return list(positional)
    if positional:
        raise InputError("give texts either on the command line or with --input, not both")
    texts, blank = _texts_in(path)
    where = "standard input" if path == "-" else f"input file {path}"
    if not texts:
        raise DataError(f"{where} holds no texts (it is empty or blank); put one text per line"
                        + (' (.jsonl: an object with a "text" field per line)' if path.endswith(".jsonl") else ""))
    if blank:  # counted and said, since the output's rows then follow the non-blank lines only
        print(f"masklm: {where}: {counted(blank, 'blank line')} skipped; output row i is its i-th "
              "non-blank line", file=sys.stderr)
    return texts


def _texts_in(path: str) -> tuple[list[str], int]:
    """The texts of ``--input`` ``path`` (see ``read_texts``), possibly none, and how many blank lines of a
    text input were left out."""
    if path == "-":
        lines = [line.rstrip("\n") for line in sys.stdin]
        if lines:
            lines[0] = lines[0].removeprefix("\ufeff")  # a byte-order mark is no text
        texts = [line for line in lines if line.strip()]
        return texts, len(lines) - len(texts)
    file = Path(path)
    if not file.is_file():
        raise DataError(f"input file {file} does not exist; check the path")
    if file.name.endswith(".jsonl"):
        texts = []
        for where, record in jsonl_objects(file, 'an object with a string "text" field'):
            if not isinstance(record.get("text"), str):
                raise DataError(f'{where}: expected an object with a string "text" field; add it')
            texts.append(record["text"])
        return texts, 0
    try:
        lines = file.read_text(encoding="utf-8-sig").splitlines()  # -sig: a byte-order mark is no text
    except UnicodeDecodeError as exc:
        raise DataError(f"{file} is not UTF-8 text ({exc.reason}); re-save it as UTF-8") from None
    texts = [line for line in lines if line.strip()]
    return texts, len(lines) - len(texts)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score sentences (pseudo-log-likelihood and friends)",
                       description="Log-probability of each sentence in nats. pll: mask each token alone "
                                   "(Salazar et al.); pll-word-l2r: also mask the later pieces of its word "
                                   "(Kauf & Ivanova); causal: left-to-right; mntp: GPT-BERT's masked "
                                   "next-token reading. Special tokens are never scored.")
    p.add_argument("sentences", nargs="*", help="sentences to score")
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--input", help="file with one sentence per line (.txt), a .jsonl with \"text\", or - for stdin")
    p.add_argument("--metric", choices=METRICS,
                   help="default: the metric that fits how the model was trained "
                   "(mntp for GPT-BERT-style mntp models, causal for causal LMs, else pll)")
    p.add_argument("--reduction", choices=["sum", "mean"], default="sum",
                   help="sum or mean of the token log-probabilities (default sum)")
    p.add_argument("--per-token", action="store_true", help="also print each token's log-probability")
    p.add_argument("--batch-tokens", type=int,
                   help="tokens per forward batch (default 4096 on CPU, 65536 on GPU)")
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    add_model_flags(p)
    p.add_argument("--json", action="store_true", help="print a JSON list of {sentence, score[, tokens]}")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    texts = read_texts(args.input, args.sentences)
    if not texts:
        raise InputError("no sentences given; pass them as arguments or with --input FILE")
    pipe = load_pipeline(args)
    metric = pipe.resolve_metric(args.metric)
    if args.metric is None:
        print(f"masklm: scoring with {metric} (the default for this model)", file=sys.stderr)
    results = pipe.score(texts, metric=metric, reduction=args.reduction, per_token=args.per_token,
                         batch_tokens=args.batch_tokens)
    if note := unscored_note(unknown_counts(pipe.tokenizer, texts)):
        print(f"masklm: {note}", file=sys.stderr)
    rows = [{"sentence": t, **(r if args.per_token else {"score": r})} for t, r in zip(texts, results)]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    for row in rows:
        print(f"{row['score']:.4f}\t{row['sentence']}")
        for token, logprob in row.get("tokens", []):
            print(f"  {logprob:9.4f}  {token}")
    return 0
