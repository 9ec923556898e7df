"""``masklm import-hf`` / ``export-hf`` (BERT) and ``import-ltg`` (reference LTG-BERT / GPT-BERT checkpoints)."""

from __future__ import annotations

import argparse
import logging
import sys
from itertools import islice

from masklm.errors import ConfigError
from masklm.files import check_out


def register(sub: argparse._SubParsersAction) -> None:
    imp = sub.add_parser(
        "import-hf", help="convert a Hugging Face BERT folder into a masklm model folder",
        description="Convert a Hugging Face BERT folder (config.json, model.safetensors or pytorch_model.bin, "
                    "tokenizer) into a masklm model folder. An encoder without MLM head gets a fresh head.",
    )
    imp.add_argument("--from", dest="source", required=True, metavar="DIR", help="Hugging Face BERT folder")
    imp.add_argument("--out", required=True, metavar="DIR", help="masklm model folder to write")
    imp.add_argument("--overwrite", action="store_true", help="replace --out if it already holds files")
    imp.set_defaults(func=run_import)

    exp = sub.add_parser(
        "export-hf", help="write a Hugging Face loadable copy of a masklm BERT folder",
        description="Write a copy of a masklm BERT model folder that transformers.AutoModelForMaskedLM "
                    "and AutoTokenizer load directly.",
    )
    exp.add_argument("--model", required=True, metavar="DIR", help="masklm model folder")
    exp.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    exp.add_argument("--overwrite", action="store_true", help="replace --out if it already holds files")
    exp.set_defaults(func=run_export)

    ltg = sub.add_parser(
        "import-ltg", help="convert a reference LTG-BERT / GPT-BERT checkpoint into a masklm model folder",
        description="Convert a reference LTG-BERT or GPT-BERT checkpoint (ltgoslo training code or its Hugging "
                    "Face wrappers) into a masklm model folder. GPT-BERT (gated attention, DWA) is recognised "
                    "from the weight names.",
    )
    ltg.add_argument("--weights", required=True, metavar="FILE", help="checkpoint: .bin/.pt or .safetensors")
    ltg.add_argument("--config", required=True, metavar="FILE", help="the checkpoint's config JSON")
    ltg.add_argument("--tokenizer", required=True, metavar="FILE", help="the checkpoint's tokenizer.json")
    ltg.add_argument("--out", required=True, metavar="DIR", help="masklm model folder to write")
    ltg.add_argument("--overwrite", action="store_true", help="replace --out if it already holds files")
    ltg.add_argument("--position-split", choices=("contiguous", "interleaved"), default="contiguous",
                     help="how the positional q/k halves are cut: contiguous (BabyLM, GPT-BERT; default) or "
                          "interleaved (BNC-era checkpoints)")
    ltg.add_argument("--check-text", nargs="+", default=["kjv"], metavar="SRC",
                     help="text (files, folders or a built-in corpus; default kjv) on which the masked-LM loss "
                          "under both position splits is compared; a clearly worse --position-split is refused")
    ltg.add_argument("--no-split-check", action="store_true", help="skip that comparison")
    ltg.add_argument("--objectives", metavar="LIST",
                     help="what the checkpoint was trained with, e.g. mlm or mntp,clm (default: read off the "
                          "masked-LM loss check, else GPT-BERT weights mean mntp,clm and LTG-BERT weights mlm); "
                          "decides where fill-mask reads a mask and the default score metric")
    ltg.set_defaults(func=run_import_ltg)


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
    from masklm.hf.bert import import_bert  # lazy: the model stack loads only when this command runs

    check_out(args.out, overwrite=args.overwrite, sources=(args.source,))
    with _StderrWarnings():
        out, _ = import_bert(args.source, args.out)
    print(out)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from masklm.hf.bert import export_bert  # lazy: the model stack loads only when this command runs

    check_out(args.out, overwrite=args.overwrite, sources=(args.model,))
    with _StderrWarnings():
        out = export_bert(args.model, args.out)
    print(out)
    return 0


def run_import_ltg(args: argparse.Namespace) -> int:
    # lazy: the model stack and the corpus readers load only when this command runs
    from masklm.data.corpus import iter_documents
    from masklm.hf.ltg_import import SPLIT_CHECK_TEXTS, import_ltg
    from masklm.objectives.registry import OBJECTIVE_NAMES

    check_out(args.out, overwrite=args.overwrite, sources=(args.weights, args.config, args.tokenizer))
    objectives = None
    if args.objectives is not None:
        objectives = [name.strip() for name in args.objectives.split(",") if name.strip()]
        unknown = [name for name in objectives if name not in OBJECTIVE_NAMES]
        if unknown or not objectives:
            raise ConfigError(f"--objectives {args.objectives!r}: use names from {', '.join(OBJECTIVE_NAMES)}, "
                              "comma-separated (e.g. mlm or mntp,clm)")
    texts = None
    if not args.no_split_check:
        texts = list(islice(iter_documents(args.check_text), SPLIT_CHECK_TEXTS))
    with _StderrWarnings():
        out = import_ltg(args.weights, args.config, args.tokenizer, args.out, position_split=args.position_split,
                         check_texts=texts, objectives=objectives,
                         log=lambda message: print(f"masklm: {message}", file=sys.stderr))
    print(out)
    return 0
