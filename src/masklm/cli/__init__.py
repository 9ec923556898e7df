"""The ``masklm`` command. One module per command group; each has ``register(subparsers)``.

Data goes to stdout, progress and logs to stderr. A ``MaskLMError`` becomes one line on stderr and
exit status 2; anything else is a bug and keeps its traceback (exit 1). A reader that closes the pipe
(``| head``) ends the command quietly with 141 (128 + SIGPIPE), the status of a Unix tool killed by it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from masklm.errors import MaskLMError
from masklm.version import __version__

# Command-group modules under masklm.cli, in the order `masklm --help` lists them.
COMMAND_MODULES = [
    "demo", "corpus", "tokenizer", "data", "train", "fill_mask", "score", "generate", "eval", "embed",
    "finetune", "predict", "hf", "serve",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors also exit 2, in one line
        self.exit(2, f"masklm: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="masklm", description="Masked language models: train, use, evaluate and serve.")
    parser.add_argument("--version", action="version", version=f"masklm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"masklm.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:  # Ctrl-C while the command modules (and torch) import is an interruption too, not a traceback
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return 2
        return int(args.func(args) or 0)
    except MaskLMError as exc:
        print(f"masklm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("masklm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`masklm predict ... | head`): stop quietly, as Unix tools do
        quiet = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):  # so the interpreter's last flush does not fail again
            try:
                os.dup2(quiet, stream.fileno())
            except (OSError, ValueError):  # a stream that is no file (pytest's capture)
                pass
        return 128 + signal.SIGPIPE if hasattr(signal, "SIGPIPE") else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
