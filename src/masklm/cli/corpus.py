"""``masklm corpus list``: the built-in corpora, with document and word counts."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("corpus", help="built-in corpora", description="Built-in corpora.")
    commands = parser.add_subparsers(dest="corpus_command", metavar="<subcommand>", parser_class=type(parser))
    listing = commands.add_parser("list", help="list built-in corpora with document and word counts",
                                  description="List built-in corpora (name, description, documents, words).")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    listing.set_defaults(func=run_list)
    parser.set_defaults(func=lambda args: (parser.print_help(sys.stderr), 2)[1])


def run_list(args: argparse.Namespace) -> int:
    from masklm.data.corpus import list_builtin  # lazy: the corpus readers load only when this command runs

    rows = list_builtin()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  {'documents':>9}  {'words':>9}  description")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['documents']:>9}  {r['words']:>9}  {r['description']}")
    return 0
