"""``masklm tokenizer train``: train a WordPiece or byte-level BPE tokenizer on a corpus."""

from __future__ import annotations

import argparse
import json
import sys

from masklm.files import check_out


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("tokenizer", help="train tokenizers", description="Train tokenizers.")
    commands = parser.add_subparsers(dest="tokenizer_command", metavar="<subcommand>", parser_class=type(parser))
    train = commands.add_parser(
        "train", help="train a tokenizer on a corpus",
        description="Train a tokenizer; writes tokenizer.json and tokenizer_config.json into --out.",
    )
    train.add_argument("--corpus", nargs="+", required=True, metavar="SRC",
                       help="files, folders or built-in corpus names (see 'masklm corpus list')")
    train.add_argument("--out", required=True, metavar="DIR", help="folder to write the tokenizer to")
    train.add_argument("--overwrite", action="store_true", help="replace the tokenizer files if --out holds files")
    train.add_argument("--kind", choices=["wordpiece", "bpe"], default="wordpiece",
                       help="WordPiece (cased) or byte-level BPE (default: wordpiece)")
    train.add_argument("--vocab-size", type=int, default=8192, metavar="N", help="vocabulary size (default: 8192)")
    train.add_argument("--min-frequency", type=int, default=2, metavar="N",
                       help="minimum pair/word frequency to enter the vocabulary (default: 2)")
    train.add_argument("--model-max-length", type=int, default=512, metavar="N",
                       help="longest input the model accepts, stored in tokenizer_config.json (default: 512)")
    train.add_argument("--json", action="store_true", help="print a JSON summary")
    train.set_defaults(func=run_train)
    parser.set_defaults(func=lambda args: (parser.print_help(sys.stderr), 2)[1])


def run_train(args: argparse.Namespace) -> int:
    # lazy: tokenizers and the corpus readers load only when this command runs
    from masklm.data.corpus import CorpusStats, iter_documents
    from masklm.tokenizer import train_tokenizer

    passes: list[CorpusStats] = []

    def documents():  # a fresh stream per pass (WordPiece reads the corpus twice); the last pass is reported
        passes.append(CorpusStats())
        return iter_documents(args.corpus, passes[-1])

    documents()  # raises here for a missing path
    check_out(args.out, overwrite=args.overwrite)  # e.g. a model folder: its tokenizer stays unless asked
    print(f"training {args.kind} tokenizer (vocab {args.vocab_size}) on {' '.join(args.corpus)}", file=sys.stderr)
    tokenizer = train_tokenizer(
        documents, kind=args.kind, vocab_size=args.vocab_size,
        min_frequency=args.min_frequency, model_max_length=args.model_max_length,
    )
    out = tokenizer.save(args.out)
    stats = passes[-1]
    print(f"read {stats.summary()}", file=sys.stderr)
    summary = {"out": str(out), "kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
               "fingerprint": tokenizer.fingerprint(), "corpus": stats.to_dict()}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{out}  ({tokenizer.kind}, vocab {tokenizer.vocab_size})")
    return 0
