"""``masklm data prepare``: tokenize a corpus into memory-mapped shards for training."""

from __future__ import annotations

import argparse
import json
import sys

from masklm.errors import ConfigError
from masklm.wording import counted


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="prepare training data", description="Prepare training data.")
    commands = parser.add_subparsers(dest="data_command", metavar="<subcommand>", parser_class=type(parser))
    prepare = commands.add_parser(
        "prepare", help="tokenize a corpus into shards",
        description="Tokenize a corpus into memory-mapped shards. Does nothing when --out is up to date.",
    )
    prepare.add_argument("--corpus", nargs="+", required=True, metavar="SRC",
                         help="files, folders or built-in corpus names (see 'masklm corpus list')")
    prepare.add_argument("--tokenizer", required=True, metavar="DIR",
                         help="folder with tokenizer.json (from 'masklm tokenizer train' or a model folder)")
    prepare.add_argument("--out", required=True, metavar="DIR", help="shard folder to write")
    prepare.add_argument("--overwrite", action="store_true",
                         help="rebuild --out when it holds shards of other files or another tokenizer")
    prepare.add_argument("--workers", type=int, default=None, metavar="N",
                         help="tokenizer processes (default: CPU count, at most 8)")
    prepare.add_argument("--json", action="store_true", help="print the manifest as JSON")
    prepare.set_defaults(func=run_prepare)
    parser.set_defaults(func=lambda args: (parser.print_help(sys.stderr), 2)[1])


def run_prepare(args: argparse.Namespace) -> int:
    # lazy: tokenizers and the shard writer load only when this command runs
    from masklm.data.shards import prepare_shards
    from masklm.tokenizer import Tokenizer

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1 (got {args.workers})")
    tokenizer = Tokenizer.load(args.tokenizer)
    manifest = prepare_shards(args.corpus, tokenizer, args.out, num_workers=args.workers,
                              overwrite=args.overwrite)
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        print(f"{args.out}  ({counted(manifest['num_documents'], 'document')}, {counted(manifest['num_tokens'], 'token')}, "
              f"{manifest['dtype']})")
    return 0
