"""``masklm import-hf`` and ``masklm export-hf``: move BERT models between masklm and Hugging Face."""

from __future__ import annotations

import argparse
import logging
import sys


def register(sub: argparse._SubParsersAction) -> None:
    imp = sub.add_parser(
        "import-hf", help="convert a Hugging Face BERT folder into a masklm model folder",
        description="Convert a Hugging Face BERT folder (config.json, model.safetensors or pytorch_model.bin, "
                    "tokenizer) into a masklm model folder. An encoder without MLM head gets a fresh head.",
    )
    imp.add_argument("--from", dest="source", required=True, metavar="DIR", help="Hugging Face BERT folder")
    imp.add_argument("--out", required=True, metavar="DIR", help="masklm model folder to write")
    imp.set_defaults(func=run_import)

    exp = sub.add_parser(
        "export-hf", help="write a Hugging Face loadable copy of a masklm BERT folder",
        description="Write a copy of a masklm BERT model folder that transformers.AutoModelForMaskedLM "
                    "and AutoTokenizer load directly.",
    )
    exp.add_argument("--model", required=True, metavar="DIR", help="masklm model folder")
    exp.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    exp.set_defaults(func=run_export)


class _StderrWarnings:
    """Show masklm's log warnings on stderr for the duration of one command."""

    def __enter__(self) -> None:
        self.handler = logging.StreamHandler(sys.stderr)  # the stderr of now (tests swap it)
        self.handler.setLevel(logging.WARNING)
        self.handler.setFormatter(logging.Formatter("masklm: warning: %(message)s"))
        logging.getLogger("masklm").addHandler(self.handler)

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("masklm").removeHandler(self.handler)


def run_import(args: argparse.Namespace) -> int:
    from masklm.hf import import_bert

    with _StderrWarnings():
        out, _ = import_bert(args.source, args.out)
    print(out)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from masklm.hf import export_bert

    with _StderrWarnings():
        out = export_bert(args.model, args.out)
    print(out)
    return 0
