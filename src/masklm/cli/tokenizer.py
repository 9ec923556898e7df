"""``masklm tokenizer train`` and ``masklm tokenizer extend``.

``train``: a WordPiece or byte-level BPE tokenizer on a corpus, with its coverage of held-out text
(``tokenizer.heldout_coverage``). ``extend``: a model folder with the most useful whole words of a domain
corpus added to its tokenizer and embeddings (``training.vocab_extend``).
"""

from __future__ import annotations

import argparse
import json
import sys

from masklm.errors import ConfigError
from masklm.files import check_out


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("tokenizer", help="train or extend tokenizers",
                            description="Train tokenizers, or extend a model's vocabulary with domain words.")
    commands = parser.add_subparsers(dest="tokenizer_command", metavar="<subcommand>", parser_class=type(parser))
    train = commands.add_parser(
        "train", help="train a tokenizer on a corpus",
        description="Train a tokenizer; writes tokenizer.json and tokenizer_config.json into --out, and reports "
                    "its coverage of held-out text (characters seen, characters in the vocabulary, [UNK] rates).",
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
    _heldout_flags(train, default=0.01, what="training")
    train.add_argument("--json", action="store_true", help="print a JSON summary")
    train.set_defaults(func=run_train)

    extend = commands.add_parser(
        "extend", help="add a domain corpus's most useful whole words to a model's vocabulary",
        description="Add the --add words of the domain corpus that the model's tokenizer splits into the most "
                    "pieces times occurrences, grow the embeddings and the MLM decoder (new rows: the mean of "
                    "the old pieces' rows), and write a model folder to continue from with "
                    "'masklm train --init-from OUT'. Reports pieces per word on held-out domain text.",
    )
    extend.add_argument("--model", required=True, metavar="DIR", help="pretrained model folder")
    extend.add_argument("--corpus", nargs="+", required=True, metavar="SRC", help="domain corpus")
    extend.add_argument("--add", type=int, required=True, metavar="N", help="how many whole words to add")
    extend.add_argument("--out", required=True, metavar="DIR", help="folder to write the extended model to")
    extend.add_argument("--overwrite", action="store_true", help="replace --out if it holds files")
    extend.add_argument("--min-frequency", type=int, default=2, metavar="N",
                        help="a word must occur this often in the domain corpus (default: 2)")
    _heldout_flags(extend, default=0.1, what="counting")
    extend.add_argument("--json", action="store_true", help="print the report as JSON")
    extend.set_defaults(func=run_extend)
    parser.set_defaults(func=lambda args: (parser.print_help(sys.stderr), 2)[1])


def _heldout_flags(parser: argparse.ArgumentParser, default: float, what: str) -> None:
    parser.add_argument("--heldout", nargs="+", metavar="SRC", default=None,
                        help=f"held-out text to report on (default: every Nth document of --corpus, kept out of {what})")
    parser.add_argument("--heldout-fraction", type=float, default=default, metavar="F",
                        help=f"share of --corpus documents held out when --heldout is not given (default: {default}; "
                             "0: none)")


class _Documents:
    """The training documents of --corpus, a fresh stream per pass (WordPiece reads the corpus twice).

    Each pass counts what it read (the last pass is reported) and collects the set of characters of the
    training text; ``heldout`` holds the --heldout documents, or else those of --corpus the stream held
    out (filled as the stream is read, so read it after)."""

    def __init__(self, args: argparse.Namespace) -> None:
        # lazy: the corpus readers load only when a tokenizer command runs
        from masklm.data.corpus import CorpusStats, iter_documents
        from masklm.tokenizer import heldout_stride

        self.args, self._stats_class, self._iter = args, CorpusStats, iter_documents
        self.stride = 0 if args.heldout else heldout_stride(args.heldout_fraction)
        self.stats, self.seen = CorpusStats(), set()
        iter_documents(args.corpus)  # raises here for a missing path
        self.heldout: list[str] = list(iter_documents(args.heldout)) if args.heldout else []

    def __call__(self):
        # lazy: see __init__
        from masklm.tokenizer import split_stream

        self.stats, self.seen = self._stats_class(), set()
        if self.stride:
            self.heldout.clear()
        for text in split_stream(self._iter(self.args.corpus, self.stats), self.stride, self.heldout):
            self.seen.update(text)
            yield text


def _read(args: argparse.Namespace) -> tuple[str, ...]:
    """What --corpus and --heldout name: --out may not replace them."""
    return (*args.corpus, *(args.heldout or ()))


def run_train(args: argparse.Namespace) -> int:
    # lazy: tokenizers load only when this command runs
    from masklm.tokenizer import check_tokenizer_settings, heldout_coverage, train_tokenizer, vocab_shortfall

    if args.model_max_length < 1:
        raise ConfigError(f"--model-max-length must be >= 1 token, got {args.model_max_length}")
    check_tokenizer_settings(args.kind, args.vocab_size, args.min_frequency)  # before the line saying it starts
    documents = _Documents(args)
    check_out(args.out, overwrite=args.overwrite, sources=_read(args))  # a model folder's tokenizer stays unless asked
    print(f"training {args.kind} tokenizer (vocab {args.vocab_size}) on {' '.join(args.corpus)}", file=sys.stderr)
    tokenizer = train_tokenizer(
        documents, kind=args.kind, vocab_size=args.vocab_size,
        min_frequency=args.min_frequency, model_max_length=args.model_max_length,
    )
    coverage = heldout_coverage(tokenizer, documents.heldout, documents.seen)
    coverage["documents"] = len(documents.heldout)
    out = tokenizer.save(args.out)
    print(f"read {documents.stats.summary()}", file=sys.stderr)
    for line in filter(None, [vocab_shortfall(tokenizer, args.vocab_size, args.min_frequency),
                              _coverage_line(coverage, args)]):
        print(line, file=sys.stderr)
    summary = {"out": str(out), "kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
               "fingerprint": tokenizer.fingerprint(), "corpus": documents.stats.to_dict(), "heldout": coverage}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{out}  ({tokenizer.kind}, vocab {tokenizer.vocab_size})")
    return 0


def _coverage_line(c: dict, args: argparse.Namespace) -> str:
    if not c["chars"]:
        return ("held-out coverage: no held-out text (the corpus has too few documents for "
                f"--heldout-fraction {args.heldout_fraction}); pass --heldout FILE to measure it")
    where = " ".join(args.heldout) if args.heldout else f"{c['documents']} held-out documents of --corpus"
    return (f"held-out coverage on {where}: {c['chars_seen']:.2%} of {c['chars']} characters seen in training, "
            f"{c['chars_in_vocab']:.2%} in the vocabulary; [UNK] {c['unknown_token_rate']:.2%} of {c['tokens']} "
            f"tokens, {c['unknown_char_rate']:.2%} of characters")


def run_extend(args: argparse.Namespace) -> int:
    # lazy: torch and the models load only when this command runs
    from masklm.training.vocab_extend import extend_model_dir

    documents = _Documents(args)
    check_out(args.out, overwrite=args.overwrite, sources=(args.model, *_read(args)))
    print(f"counting the words of {' '.join(args.corpus)}", file=sys.stderr)
    report = extend_model_dir(args.model, documents(), documents.heldout, args.out, add=args.add,
                              min_frequency=args.min_frequency)
    print(f"read {documents.stats.summary()}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    before, after = report["heldout_before"], report["heldout_after"]
    fewer = (f" (only {report['words_added']} of the {args.add} asked for: the corpus has no more words split into "
             f"pieces that occur {args.min_frequency}+ times)" if report["words_added"] < args.add else "")
    print(f"{report['out']}: added {report['words_added']} words ({report['tokens_added']} tokens; vocab "
          f"{report['vocab_size'][0]} -> {report['vocab_size'][1]}){fewer}")
    if report["left_out_unknown"]:
        print(f"left out {report['left_out_unknown']} words with a character the vocabulary lacks ([UNK] pieces)")
    if before["words"]:
        print(f"pieces per word on {before['words']} held-out words: {before['pieces_per_word']:.3f} -> "
              f"{after['pieces_per_word']:.3f}")
    else:
        print("pieces per word: no held-out text (pass --heldout FILE or a --heldout-fraction > 0)")
    print("top words: " + ", ".join(f"{w['word']} ({w['frequency']}x, {len(w['pieces'])} pieces)"
                                    for w in report["top"][:10]))
    return 0

