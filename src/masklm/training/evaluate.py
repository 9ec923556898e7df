"""Held-out evaluation: the split the trainer holds out, and one evaluator per way a model is read.

- ``evaluate_mlm``: masked-token loss and accuracy at a fixed 15% rate (optionally read one position to
  the left, as GPT-BERT's MNTP predicts).
- ``evaluate_causal``: next-token loss and perplexity with causal attention (CLM, MNTP).
- ``evaluate_diffusion``: MDLM's per-token NELBO, an upper bound on perplexity (``objectives.diffusion``
  holds the bound's maths).

Every evaluator masks with a seed offset by ``EVAL_SEED_OFFSET``, so held-out masks never coincide with
training masks, and uses the same masks at every call, so numbers from different steps, runs and
objectives compare. Which evaluators a model gets follows from its objectives
(``objectives.reading.TrainedAs.evaluators``); ``evaluate_heldout`` runs them for the trainer, and
``masklm demo`` and experiments/antlm_vs_mlm.py call ``heldout_rows`` and the evaluators themselves.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from masklm.data.masking import IGNORE_INDEX, mask_tokens
from masklm.data.packing import PackedRows, split_documents
from masklm.data.shards import ShardedCorpus
from masklm.objectives.base import next_token_labels
from masklm.objectives.clm import CausalLM
from masklm.objectives.diffusion import diffusion_nelbo, maskable_tokens
from masklm.tokenizer import Tokenizer

EVAL_MASK_RATE = 0.15
EVAL_SEED_OFFSET = 1_000_003  # held-out masks never coincide with training masks


def heldout_rows(corpus: ShardedCorpus, *, heldout_fraction: float, seed: int, seq_len: int,
                 pad_id: int) -> PackedRows:
    """The rows a run with these settings holds out: the documents ``split_documents(heldout_fraction,
    seed)`` sets aside, packed at ``seq_len`` (the base length, whatever the sequence-length schedule)."""
    _, heldout_docs = split_documents(corpus.num_documents, heldout_fraction, seed)
    return PackedRows(corpus, heldout_docs, seq_len, pad_id)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[torch.device]:
    """No dropout while evaluating; the model's mode is restored afterwards. Yields its device."""
    was_training = model.training
    model.eval()
    try:
        yield next(model.parameters()).device
    finally:
        model.train(was_training)


def _batches(rows: PackedRows, batch_size: int, max_batches: int,
             device: torch.device) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """(row indices, batch on ``device``) over the first ``batch_size * max_batches`` rows, in order."""
    n_rows = min(len(rows), batch_size * max_batches)
    for lo in range(0, n_rows, batch_size):
        row_ids = list(range(lo, min(lo + batch_size, n_rows)))
        yield row_ids, {k: v.to(device) for k, v in rows.batch(row_ids).items()}


@torch.no_grad()
def evaluate_mlm(model: nn.Module, rows: PackedRows, tok: Tokenizer, *, batch_size: int, max_batches: int,
                 seed: int, baseline_id: int | None = None, shift: bool = False) -> dict[str, float]:
    """Masked-token loss and accuracy at a fixed 15% rate, with the same masks at every call.

    -> {"eval_loss": mean nats per masked token, "eval_accuracy", "eval_tokens"}. With ``baseline_id``,
    also "baseline_accuracy": always guessing that token on the same positions. With ``shift``, the
    prediction for masked token j is read at j-1, as GPT-BERT's MNTP models make it (a masked token
    that starts a row or a document then has nothing to be read from and is skipped).
    """
    loss_sum, correct, count, baseline = 0.0, 0, 0, 0
    with _eval_mode(model) as device:
        for row_ids, batch in _batches(rows, batch_size, max_batches, device):
            inputs, labels = mask_tokens(batch["input_ids"], rows=row_ids, seed=seed + EVAL_SEED_OFFSET, epoch=0,
                                         rate=EVAL_MASK_RATE, mask_id=tok.mask_id, vocab_size=tok.vocab_size,
                                         special_ids=tok.special_ids, attention_mask=batch["attention_mask"])
            if shift:
                labels = next_token_labels(labels, batch["attention_mask"], batch["document_ids"])
            if not (labels != IGNORE_INDEX).any():
                continue
            out = model(inputs, attention_mask=batch["attention_mask"], labels=labels,
                        document_ids=batch["document_ids"])
            target = labels[labels != IGNORE_INDEX]
            loss_sum += F.cross_entropy(out.logits.float(), target, reduction="sum").item()
            correct += int((out.logits.argmax(-1) == target).sum())
            count += int(target.numel())
            if baseline_id is not None:
                baseline += int((target == baseline_id).sum())
    result = {"eval_loss": loss_sum / max(count, 1), "eval_accuracy": correct / max(count, 1), "eval_tokens": count}
    if baseline_id is not None:
        result["baseline_accuracy"] = baseline / max(count, 1)
    return result


@torch.no_grad()
def evaluate_causal(model: nn.Module, rows: PackedRows, tok: Tokenizer | None = None, *, batch_size: int,
                    max_batches: int) -> dict[str, float]:
    """Causal next-token loss over the first ``batch_size * max_batches`` held-out rows.

    -> {"causal_loss": mean nats per predicted token, "causal_ppl": exp of it, "tokens": N predicted}.
    As in training, the first token of each row and of each document is not predicted: nothing in
    its row and document comes before it.
    """
    objective = CausalLM(tok)
    loss_sum, count = 0.0, 0
    with _eval_mode(model) as device:
        for row_ids, batch in _batches(rows, batch_size, max_batches, device):
            ob = objective(batch, row_ids, 0)
            selected = ob.labels != IGNORE_INDEX
            if not selected.any():
                continue
            out = model(ob.input_ids, attention_mask=ob.attention_mask, labels=ob.labels, causal=True,
                        document_ids=ob.document_ids)
            loss_sum += F.cross_entropy(out.logits.float(), ob.labels[selected], reduction="sum").item()
            count += int(selected.sum())
    loss = loss_sum / max(count, 1)
    return {"causal_loss": loss, "causal_ppl": math.exp(min(loss, 700.0)), "tokens": count}


@torch.no_grad()
def evaluate_diffusion(model: nn.Module, rows: PackedRows, tok: Tokenizer, *, batch_size: int,
                       max_batches: int, samples: int = 8, seed: int = 0, eps: float = 1e-3) -> dict[str, float]:
    """The MDLM likelihood bound over the first ``batch_size * max_batches`` held-out rows.

    -> {"diffusion_nelbo": per-token NELBO in nats (over maskable tokens), "diffusion_ppl_bound":
    exp of it (an upper bound on perplexity), "diffusion_nelbo_stderr", "samples", "tokens"}.
    ``samples`` draws of t per row; pass a seed no training mask uses.
    """
    total, count = 0.0, 0
    per_row: list[torch.Tensor] = []
    with _eval_mode(model) as device:
        for row_ids, batch in _batches(rows, batch_size, max_batches, device):
            attention, docs = batch["attention_mask"], batch["document_ids"]
            maskable = maskable_tokens(batch["input_ids"], attention, tok.special_ids)

            def logits_fn(noisy: torch.Tensor, labels: torch.Tensor, attention=attention, docs=docs) -> torch.Tensor:
                return model(noisy, attention_mask=attention, labels=labels, document_ids=docs).logits

            est = diffusion_nelbo(logits_fn, batch["input_ids"], maskable=maskable, mask_id=tok.mask_id,
                                  samples=samples, seed=seed, rows=row_ids, eps=eps)  # [K, B]
            total += float(est.mean(0).sum())
            count += int(maskable.sum())
            per_row.append(est)
    nelbo = total / max(count, 1)
    stderr = 0.0
    if per_row and samples > 1:
        est = torch.cat(per_row, dim=1)  # [K, R]
        stderr = float(est.sum(1).std()) / math.sqrt(samples) / max(count, 1)
    return {"diffusion_nelbo": nelbo, "diffusion_ppl_bound": math.exp(min(nelbo, 700.0)),
            "diffusion_nelbo_stderr": stderr, "samples": samples, "tokens": count}


def evaluate_heldout(model: nn.Module, rows: PackedRows, tok: Tokenizer, evaluators: Sequence[str], *,
                     batch_size: int, max_batches: int, seed: int, diffusion_samples: int,
                     diffusion_eps: float, shift: bool = False) -> dict[str, float]:
    """The evaluators named in ``evaluators`` (``TrainedAs(...).evaluators``: mlm always, then causal and
    diffusion as trained for) -> one record: the MLM keys, ``causal_loss``/``causal_ppl``, and
    ``diffusion_nelbo``/``diffusion_ppl_bound``/``diffusion_nelbo_stderr``/``samples``. ``shift``
    (``TrainedAs(...).mask_shift``) reads masks where the model was trained to predict them."""
    size = dict(batch_size=batch_size, max_batches=max_batches)
    result = evaluate_mlm(model, rows, tok, seed=seed, shift=shift, **size)
    if "causal" in evaluators:
        causal = evaluate_causal(model, rows, tok, **size)
        result |= {"causal_loss": causal["causal_loss"], "causal_ppl": causal["causal_ppl"]}
    if "diffusion" in evaluators:
        bound = evaluate_diffusion(model, rows, tok, samples=diffusion_samples, seed=seed + EVAL_SEED_OFFSET,
                                   eps=diffusion_eps, **size)
        result |= {k: bound[k] for k in ("diffusion_nelbo", "diffusion_ppl_bound", "diffusion_nelbo_stderr",
                                         "samples")}
    return result


def held_out_line(result: dict[str, float]) -> str:
    """The line a run ends with: what ``evaluate_heldout`` measured, or that the held-out rows held nothing
    to measure (a tiny corpus: a score of 0 would read as a result)."""
    if not result.get("eval_tokens"):
        return ("held-out set too small to evaluate (no masked token in its rows); a larger corpus, or "
                "--heldout-fraction above its share, gives one")
    parts = [f"held-out masked-token accuracy {result['eval_accuracy']:.4f}, loss {result['eval_loss']:.4f}"]
    if "causal_ppl" in result:
        parts.append(f"causal perplexity {result['causal_ppl']:.1f}")
    if "diffusion_ppl_bound" in result:
        parts.append(f"diffusion perplexity bound {result['diffusion_ppl_bound']:.1f}")
    return "; ".join(parts)


def heldout_share_note(heldout: int, training: int, fraction: float) -> str | None:
    """A line when the held-out rows are far more of the corpus than ``fraction`` asks: the split is by
    documents, so one large document held out can take a third of the data from training. None otherwise."""
    share = heldout / max(heldout + training, 1)
    if share <= 2 * fraction + 0.05:
        return None
    return (f"the held-out rows are {share:.0%} of the corpus's rows, against --heldout-fraction {fraction:g}: "
            "documents are held out whole, and a large one weighs more; split large files into documents (a "
            "blank line between them) or lower --heldout-fraction")

