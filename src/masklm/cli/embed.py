"""``masklm embed``: sentence embeddings to a .npy or .jsonl file (or JSONL on stdout)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from masklm.cli.finetune import add_window_flags, report_windows, window_spec
from masklm.cli.model_flags import add_model_flags, load_pipeline
from masklm.cli.score import read_texts
from masklm.errors import InputError
from masklm.files import atomic_file, check_out
from masklm.wording import counted


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="sentence embeddings (mean or [CLS] pooling)",
                       description="Embed texts with the encoder's last hidden states. mean pooling averages "
                                   "all non-padding tokens ([CLS] and [SEP] included, like "
                                   "sentence-transformers); vectors are L2-normalised unless --no-normalize.")
    p.add_argument("texts", nargs="*", help="texts to embed")
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--input", help="file with one text per line (.txt), a .jsonl with \"text\", or - for stdin")
    p.add_argument("--out", help="FILE.npy (float32 [N, D]) or FILE.jsonl ({text, embedding} per line); "
                                 "default: JSONL on stdout")
    p.add_argument("--overwrite", action="store_true", help="replace the --out file if it exists")
    p.add_argument("--pooling", choices=["mean", "cls"], default="mean", help="default mean")
    p.add_argument("--no-normalize", action="store_true", help="keep the raw vector lengths")
    p.add_argument("--batch-tokens", type=int,
                   help="tokens per forward batch (default 4096 on CPU, 65536 on GPU)")
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    add_window_flags(p, "Default: a text over the maximum is an error. With windows each window is pooled "
                        "as --pooling says, then the windows' vectors are combined, then normalised.")
    add_model_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np  # lazy: numpy loads only when this command runs

    out = Path(args.out) if args.out else None
    if out is not None and out.suffix not in (".npy", ".jsonl"):
        raise InputError(f"--out {out}: unknown format; end the file name in .npy or .jsonl")
    if out is not None:
        check_out(out, overwrite=args.overwrite, sources=(args.model, *filter(None, [args.input])), folder=False)
    texts = read_texts(args.input, args.texts)
    if not texts:
        raise InputError("no texts given; pass them as arguments or with --input FILE")
    pipe = load_pipeline(args)
    windows = window_spec(args)
    counts: list[int] = []
    vectors = pipe.embed(texts, pooling=args.pooling, normalize=not args.no_normalize,
                         batch_tokens=args.batch_tokens, windows=windows, windows_used=counts)
    extra = [{"windows": n} if windows is not None else {} for n in counts]
    if windows is not None:
        report_windows(counts)
    if out is None:
        for text, vec, more in zip(texts, vectors, extra):
            print(json.dumps({"text": text, "embedding": vec.tolist(), **more}, ensure_ascii=False))
        return 0
    with atomic_file(out) as tmp:  # no half-written file is ever left under the name
        if out.suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, vectors)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for text, vec, more in zip(texts, vectors, extra):
                    f.write(json.dumps({"text": text, "embedding": vec.tolist(), **more}, ensure_ascii=False) + "\n")
    print(f"masklm: wrote {counted(len(texts), 'embedding')} of size {vectors.shape[1]} to {out}", file=sys.stderr)
    return 0
