"""Continued pretraining on a domain corpus, with and without domain vocabulary (``masklm tokenizer extend``).

1. A base model: a WordPiece tokenizer and a tiny LTG-BERT trained on the built-in corpus (``kjv``), which
   has no clinical words, so "troponin" or "hyperlipidaemia" come out in many pieces.
2. A synthetic clinical corpus, built by this script from templates (``clinical_corpus``: notes about
   patients, laboratory values, drugs and diagnoses, mixed with ordinary words), split into training and
   held-out notes.
3. ``extend_model_dir`` adds the ``--add`` most useful whole words of the training notes (frequency x
   pieces saved) to a copy of the base model.
4. Two continued-pretraining runs from the base and from the extended copy: same notes, same steps, batch,
   learning rate, whole-word masking and seed (``masklm train --init-from``).
5. Every model is scored on the held-out notes by **whole-word masked accuracy**: 15% of the words of each
   note (the same words for every model: words are the tokenizer's pre-tokenized words, which the
   extension does not change) are masked with all their pieces, and a word counts as right only when
   every piece is. Token accuracy would not compare: the extended tokenizer has fewer, rarer tokens. The
   same score restricted to the added words ("domain words") shows where the difference comes from.

    python experiments/domain_vocab.py --quick        # a smoke run, about a minute
    python experiments/domain_vocab.py                # default sizes
    python experiments/domain_vocab.py --add 500 --cpt-steps 600 --out runs/domain2

Writes ``OUT/results.json`` and ``OUT/results.md`` (the table); ``OUT/base``, ``OUT/extended``, ``OUT/cpt_*``
hold the models.
"""

from __future__ import annotations

import argparse
import random
import sys
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import Experiment

from masklm.data.corpus import iter_documents
from masklm.errors import MaskLMError
from masklm.modeldir import load_model_dir
from masklm.tokenizer import Tokenizer, train_tokenizer, word_starts
from masklm.training.config import TrainConfig
from masklm.training.trainer import train
from masklm.training.vocab_extend import extend_model_dir, pieces_per_word

PATIENT = ["the patient", "a 64-year-old man", "a 71-year-old woman", "the child", "she", "he", "the resident"]
SYMPTOM = ["chest pain", "dyspnoea", "palpitations", "syncope", "haemoptysis", "orthopnoea", "tachycardia",
           "bradycardia", "hypotension", "diaphoresis", "nausea", "oedema", "claudication", "fatigue"]
LAB = ["troponin", "creatinine", "haemoglobin", "potassium", "sodium", "lactate", "bilirubin", "ferritin",
       "procalcitonin", "fibrinogen", "albumin", "cholesterol", "triglycerides", "glucose"]
CONDITION = ["hyperlipidaemia", "hypertension", "atherosclerosis", "cardiomyopathy", "pneumonia", "sepsis",
             "hypothyroidism", "nephrolithiasis", "pancreatitis", "cholecystitis", "diverticulitis",
             "endocarditis", "pericarditis", "thrombocytopenia", "hyperkalaemia", "hyponatraemia"]
DRUG = ["atorvastatin", "bisoprolol", "ramipril", "furosemide", "amlodipine", "apixaban", "clopidogrel",
        "metformin", "amoxicillin", "ceftriaxone", "omeprazole", "levothyroxine", "spironolactone", "heparin"]
TEST = ["echocardiogram", "electrocardiogram", "angiography", "ultrasound", "radiograph", "colonoscopy",
        "spirometry", "endoscopy", "tomography", "biopsy"]
FINDING = ["normal", "unremarkable", "abnormal", "elevated", "reduced", "borderline", "stable", "worsening"]
TEMPLATES = [
    "{patient} presented with {symptom} and {symptom2} for two days.",
    "on admission {lab} was {finding} and {lab2} was {finding2}.",
    "{patient} has a history of {condition} and {condition2}.",
    "{drug} was started for {condition} and {drug2} was continued.",
    "the {test} was {finding}; {lab} will be repeated in the morning.",
    "{patient} was treated for {condition} with {drug}.",
    "we discussed {condition} with the family and the plan for {test}.",
    "repeat {lab} is {finding}, so {drug} was stopped.",
    "{patient} denies {symptom} but reports {symptom2} at night.",
    "the {test} showed {condition}, and {drug} was given.",
]


def clinical_corpus(n: int, seed: int) -> list[str]:
    """``n`` synthetic clinical notes of 3-7 sentences each, the same for the same seed."""
    rng = random.Random(seed)

    def sentence() -> str:
        pick = {name: rng.choice(pool) for name, pool in (
            ("patient", PATIENT), ("symptom", SYMPTOM), ("symptom2", SYMPTOM), ("lab", LAB), ("lab2", LAB),
            ("condition", CONDITION), ("condition2", CONDITION), ("drug", DRUG), ("drug2", DRUG),
            ("test", TEST), ("finding", FINDING), ("finding2", FINDING))}
        text = rng.choice(TEMPLATES).format(**pick)
        return text[0].upper() + text[1:]

    return [" ".join(sentence() for _ in range(rng.randint(3, 7))) for _ in range(n)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/domain_vocab", help="output folder (must be new or empty)")
    p.add_argument("--quick", action="store_true", help="a smoke version: small corpora, few steps")
    p.add_argument("--base-steps", type=int, default=None, help="base pretraining steps on kjv (default 600)")
    p.add_argument("--cpt-steps", type=int, default=None, help="continued-pretraining steps (default 300)")
    p.add_argument("--add", type=int, default=None, help="domain words to add (default 200)")
    p.add_argument("--notes", type=int, default=None, help="training notes (default 2000)")
    p.add_argument("--heldout-notes", type=int, default=None, help="held-out notes scored (default 200)")
    p.add_argument("--vocab-size", type=int, default=None, help="base WordPiece vocabulary (default 4096)")
    p.add_argument("--arch", default="ltg-bert")
    p.add_argument("--size", default="tiny")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--mask-rate", type=float, default=0.15, help="share of held-out words masked when scoring")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is faster on a busy machine)")
    args = p.parse_args(argv)
    quick = {"base_steps": 15, "cpt_steps": 10, "add": 40, "notes": 200, "heldout_notes": 30, "vocab_size": 1000}
    full = {"base_steps": 600, "cpt_steps": 300, "add": 200, "notes": 2000, "heldout_notes": 200,
            "vocab_size": 4096}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def _words(tok: Tokenizer, text: str) -> tuple[list[int], list[list[int]]]:
    """-> (token ids with [CLS]/[SEP], the token positions of each word)."""
    enc = tok.encode(text)
    starts = word_starts(enc, text)
    groups: list[list[int]] = []
    for i, special in enumerate(enc.special_tokens_mask):
        if not special:
            if starts[i] or not groups:
                groups.append([i])
            else:
                groups[-1].append(i)
    return enc.ids, groups


@torch.no_grad()
def whole_word_accuracy(model_dir: Path, texts: list[str], terms: set[str], *, rate: float,
                        seed: int) -> dict[str, Any]:
    """Mask ``rate`` of the words of each text (all their pieces; the same word indices for every model)
    -> word accuracy (every piece right), the same over words in ``terms``, and piece accuracy."""
    model, _, tok = load_model_dir(model_dir)
    words_right = words = terms_right = term_words = pieces_right = pieces = 0
    word_counts = []
    for index, text in enumerate(texts):
        ids, groups = _words(tok, text)
        word_counts.append(len(groups))
        rng = np.random.default_rng([seed, index])
        chosen = rng.choice(len(groups), size=max(1, round(rate * len(groups))), replace=False)
        positions = [p for w in chosen for p in groups[w]]
        inputs = torch.tensor([ids])
        inputs[0, positions] = tok.mask_id
        predicted = model(inputs).logits[0].argmax(-1)  # [T]
        for w in chosen:
            right = all(int(predicted[p]) == ids[p] for p in groups[w])
            words, words_right = words + 1, words_right + right
            pieces += len(groups[w])
            pieces_right += sum(int(predicted[p]) == ids[p] for p in groups[w])
            spelled = tok.decode([ids[p] for p in groups[w]])
            if spelled in terms:
                term_words, terms_right = term_words + 1, terms_right + right
    return {"word_accuracy": words_right / words, "words": words, "term_accuracy": terms_right / max(term_words, 1),
            "term_words": term_words, "piece_accuracy": pieces_right / pieces, "pieces": pieces,
            "word_counts": word_counts}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    experiment = Experiment("domain_vocab.py", args.out, argv, args.threads)
    out, log = experiment.out, experiment.log

    notes = clinical_corpus(args.notes + args.heldout_notes, args.seed)
    train_notes, heldout = notes[:args.notes], notes[args.notes:]
    (out / "notes.txt").write_text("\n\n".join(train_notes) + "\n", encoding="utf-8")
    (out / "heldout.txt").write_text("\n\n".join(heldout) + "\n", encoding="utf-8")
    general = list(islice(iter_documents(["kjv"]), 150)) if args.quick else iter_documents(["kjv"])
    log(f"base tokenizer: wordpiece {args.vocab_size} on kjv")
    tok = train_tokenizer(general, kind="wordpiece", vocab_size=args.vocab_size, model_max_length=args.seq_len)
    tok.save(out / "tokenizer")
    common = dict(arch=args.arch, size=args.size, seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr,
                  warmup_steps=0.05, seed=args.seed, log_every=10, eval_every=0, progress=False,
                  model={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    log(f"base model: {args.arch} {args.size}, {args.base_steps} steps on kjv")
    train(TrainConfig(corpus=["kjv"], out=str(out / "base"), tokenizer=str(out / "tokenizer"),
                      max_steps=args.base_steps, **common), log=lambda m: log(f"  base: {m}"))
    log(f"extension: the {args.add} most useful whole words of the training notes")
    report = extend_model_dir(out / "base" / "final", train_notes, heldout, out / "extended", add=args.add)
    # The added words, as a word of text spells them (a BPE base would spell them "Ġword").
    terms = {t.removeprefix("Ġ") for t, i in Tokenizer.load(out / "extended").backend.get_vocab().items()
             if i >= tok.vocab_size}

    runs = {"base (no continued pretraining)": out / "base" / "final"}
    for name, start in (("general vocabulary", out / "base" / "final"), ("domain vocabulary", out / "extended")):
        run = out / ("cpt_" + name.split()[0])
        log(f"continued pretraining, {name}: {args.cpt_steps} steps from {start}")
        train(TrainConfig(corpus=[str(out / "notes.txt")], out=str(run), init_from=str(start), masking="whole-word",
                          max_steps=args.cpt_steps, heldout_fraction=0.0, **common),
              log=lambda m, name=name: log(f"  {name}: {m}"))
        runs[f"continued, {name}"] = run / "final"

    rows = []
    for name, folder in runs.items():
        scores = whole_word_accuracy(folder, heldout, terms, rate=args.mask_rate, seed=args.seed)
        model_tok = Tokenizer.load(folder)
        rows.append({"run": name, "vocab_size": model_tok.vocab_size,
                     "pieces_per_word": pieces_per_word(model_tok, heldout)["pieces_per_word"], **scores})
        log(f"{name}: whole-word accuracy {scores['word_accuracy']:.1%} "
            f"(domain words {scores['term_accuracy']:.1%} of {scores['term_words']})")
    if len({tuple(r.pop("word_counts")) for r in rows}) != 1:
        raise RuntimeError("the models split the held-out notes into different words; the scores would not compare")
    experiment.finish(rows, markdown_table(rows), words_added=report["words_added"],
                      tokens_added=report["tokens_added"], top_words=[w["word"] for w in report["top"]],
                      pieces_per_word_before_after=[report["heldout_before"]["pieces_per_word"],
                                                    report["heldout_after"]["pieces_per_word"]], args=vars(args))
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | vocab | pieces/word (held-out) | whole-word acc | domain-word acc | piece acc |\n"
            "|---|---|---|---|---|---|\n")
    return head + "\n".join(
        f"| {r['run']} | {r['vocab_size']:,} | {r['pieces_per_word']:.2f} | {r['word_accuracy']:.1%} "
        f"({r['words']:,} words) | {r['term_accuracy']:.1%} ({r['term_words']:,}) | {r['piece_accuracy']:.1%} |"
        for r in rows) + "\n"


if __name__ == "__main__":
    try:
        main()
    except MaskLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
