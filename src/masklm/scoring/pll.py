"""Sentence scores from a masked LM: PLL, PLL-word-l2r, causal and MNTP log-probabilities.

Every metric scores the same tokens, the non-special tokens of ``[CLS] sentence [SEP]``, and differs
only in what the model sees and where the score is read:

- ``pll`` (Salazar et al., 2020): for each token t, one copy with t alone replaced by [MASK];
  read ``log P(w_t)`` at t.
- ``pll-word-l2r`` (Kauf & Ivanova, 2023): as ``pll``, but the copy also masks the *later* pieces of
  t's word (the fast tokenizer's ``word_ids``), so a multi-piece word cannot lean on its own ending.
- ``mntp`` (GPT-BERT's masked next-token prediction): t is masked, attention is bidirectional, and the
  score is read one position to the left, at t - 1.
- ``causal``: one unmasked copy per sentence with causal attention; the logits at t - 1 score t (the
  first word is scored from [CLS]). ``causal`` and ``mntp`` cannot score a token at position 0, so a
  tokenizer without [CLS] loses its first token there.

Work plan (DESIGN.md §3: no wasted work, Python out of the hot loop): every *copy* (a masked row) of
every sentence goes into one list, sorted by length, and is cut into batches of at most
``batch_tokens`` tokens (rows x longest row), so short sentences share batches and equal lengths
need no padding. The encoder runs on a batch ``[B, T]``; every layer but the last runs on all tokens,
the last one only at the scored position of each masked copy (its queries, attention output and FFN;
keys and values still from every position: ``encode_at``, BERT's and LTG-BERT's sparse last layer), and
only those ``[R, D]`` rows go through the MLM head (``[R, V]``): one position per copy instead of ``T``,
in the last layer and the head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from masklm.errors import InputError
from masklm.inference.batching import encode, mask_or_none, resolve_batch_tokens, token_batches

METRICS = ("pll", "pll-word-l2r", "causal", "mntp")
REDUCTIONS = ("sum", "mean")


@dataclass
class Encoded:
    """Sentences as flat arrays (one concatenation of all token rows), ready for batching.

    ids, words:  ``[sum L]`` token ids and word ids (-1 for special tokens and padding).
    starts:      ``[S]`` offset of each sentence in the flat arrays; ``lengths`` ``[S]`` their L.
    scored:      per sentence, ``[n_s]`` positions of the tokens that get a score.
    """

    ids: torch.Tensor
    words: torch.Tensor
    starts: np.ndarray
    lengths: np.ndarray
    scored: list[np.ndarray]


def check_metric(metric: str, reduction: str = "sum") -> None:
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    if reduction not in REDUCTIONS:
        raise InputError(f"unknown reduction {reduction!r}; use sum or mean")


def encode_sentences(tokenizer, sentences: Sequence[str], max_length: int, metric: str = "pll") -> Encoded:
    """Tokenize and check: a non-string, an empty sentence or one over ``max_length`` tokens is an InputError."""
    encodings = encode(tokenizer, sentences, max_length, "sentence")
    special = set(tokenizer.special_ids)
    ids, words, scored, lengths = [], [], [], []
    for i, (text, enc) in enumerate(zip(sentences, encodings)):
        row = enc.ids
        positions = [p for p, (t, m) in enumerate(zip(row, enc.special_tokens_mask)) if not m and t not in special]
        if metric in ("causal", "mntp"):
            positions = [p for p in positions if p > 0]  # nothing to the left to read from
        if not positions:
            why = ("every word of it is [UNK] to this tokenizer (text it cannot spell), and [UNK] is not scored"
                   if tokenizer.unk_id in row else "remove empty sentences from the input")
            raise InputError(f"sentence {i} ({text[:40]!r}) has no tokens to score; {why}")
        ids.append(row)
        words.append([-1 if w is None or t in special else w for t, w in zip(row, enc.word_ids)])
        scored.append(np.asarray(positions, dtype=np.int64))
        lengths.append(len(row))
    lengths_np = np.asarray(lengths, dtype=np.int64)
    starts = np.zeros(len(lengths), dtype=np.int64)
    starts[1:] = np.cumsum(lengths_np)[:-1]
    flat = [t for row in ids for t in row]
    flat_words = [w for row in words for w in row]
    return Encoded(torch.tensor(flat, dtype=torch.long), torch.tensor(flat_words, dtype=torch.long),
                   starts, lengths_np, scored)


def _plan(enc: Encoded, metric: str) -> dict[str, np.ndarray]:
    """Rows (model inputs) and reads (scored positions), rows sorted by length, longest first.

    Row arrays ``[N_rows]``: ``sent`` (which sentence), ``mask`` (position to mask, -1 = none).
    Read arrays ``[N_reads]`` grouped by row: ``row``, ``pos`` (where to read), ``target`` (token id),
    ``slot`` (index into the flat output of all scored tokens); ``row_start`` ``[N_rows + 1]``.
    """
    counts = np.asarray([len(p) for p in enc.scored], dtype=np.int64)
    slot_start = np.zeros(len(counts), dtype=np.int64)
    slot_start[1:] = np.cumsum(counts)[:-1]
    # Longest first, so each batch's first row sets its width; a stable sort keeps copies in order.
    order = np.argsort(-enc.lengths, kind="stable")
    positions = np.concatenate([enc.scored[s] for s in order])           # [N_reads]
    per = counts[order]
    sent_of_read = np.repeat(order, per)
    slot = np.concatenate([slot_start[s] + np.arange(counts[s]) for s in order])
    target = enc.ids[torch.from_numpy(enc.starts[sent_of_read] + positions)].numpy()
    if metric == "causal":  # one row per sentence, all its tokens read from it
        sent = order
        mask = np.full(len(order), -1, dtype=np.int64)
        row = np.repeat(np.arange(len(order)), per)
        pos = positions - 1
    else:  # one row per scored token
        sent = sent_of_read
        mask = positions
        row = np.arange(len(positions))
        pos = positions - 1 if metric == "mntp" else positions
    row_start = np.searchsorted(row, np.arange(len(sent) + 1))
    return dict(sent=sent, mask=mask, row=row, pos=pos, target=target, slot=slot, row_start=row_start)


@torch.inference_mode()
def token_logprobs(
    model: torch.nn.Module,
    tokenizer,
    sentences: Sequence[str],
    metric: str = "pll",
    batch_tokens: int | None = None,
    max_length: int | None = None,
    sparse: bool = True,
) -> tuple[Encoded, list[np.ndarray]]:
    """Log-probability (natural log) of every scored token -> ``(encoded, [ [n_s] float64 per sentence ])``.

    ``model`` has ``encode(ids [B, T], attention_mask, causal) -> [B, T, D]`` and
    ``predict([R, D]) -> [R, V]``; ``max_length`` defaults to ``model.config.max_position_embeddings``;
    ``batch_tokens`` None means ``batching.DEFAULT_BATCH_TOKENS`` for the model's device.
    ``sparse``: with a model that has ``encode_at`` (and ``encode(..., selected=flat positions [R]) -> [R, D]``
    through it), the last layer runs only at the read position of each masked copy (all but
    ``causal``, which reads every position of its row); False runs the full encoder (the reference).
    """
    check_metric(metric)
    device = next(model.parameters()).device
    batch_tokens = resolve_batch_tokens(batch_tokens, device)
    max_length = max_length or model.config.max_position_embeddings
    enc = encode_sentences(tokenizer, sentences, max_length, metric)
    plan = _plan(enc, metric)
    mask_id = tokenizer.mask_id
    row_len = enc.lengths[plan["sent"]]
    out = torch.empty(int(sum(len(p) for p in enc.scored)), dtype=torch.float32)

    for lo, hi in token_batches(row_len, batch_tokens):
        sent = plan["sent"][lo:hi]
        width = int(row_len[lo])
        # Gather the rows out of the flat arrays: index = sentence start + column, padded past L.
        cols = torch.arange(width)
        valid = cols[None, :] < torch.from_numpy(enc.lengths[sent])[:, None]          # [B, T]
        index = (torch.from_numpy(enc.starts[sent])[:, None] + cols[None, :]).clamp_(max=len(enc.ids) - 1)
        input_ids = torch.where(valid, enc.ids[index], tokenizer.pad_id)
        mask = torch.from_numpy(plan["mask"][lo:hi])
        if metric != "causal":
            rows = torch.arange(hi - lo)
            if metric == "pll-word-l2r":
                words = torch.where(valid, enc.words[index], -1)
                own = words[rows, mask][:, None]
                later = (words == own) & (own >= 0) & (cols[None, :] > mask[:, None])
                input_ids[later] = mask_id
            input_ids[rows, mask] = mask_id
        attention_mask = mask_or_none(valid.long(), device)
        r0, r1 = plan["row_start"][lo], plan["row_start"][hi]
        read_row = torch.from_numpy(plan["row"][r0:r1] - lo).to(device)
        read_pos = torch.from_numpy(plan["pos"][r0:r1]).to(device)
        if sparse and metric != "causal" and hasattr(model, "encode_at"):
            # one read per row, rows in order: flat positions are sorted, as encode_at asks
            picked = model.encode(input_ids.to(device), attention_mask=attention_mask, causal=False,
                                  selected=read_row * width + read_pos)                # [R, D]
        else:
            hidden = model.encode(input_ids.to(device), attention_mask=attention_mask,
                                  causal=metric == "causal")                           # [B, T, D]
            picked = hidden[read_row, read_pos]                                        # [R, D]
        logits = model.predict(picked).float()                                         # [R, V]
        target = torch.from_numpy(plan["target"][r0:r1]).to(device)
        logprob = logits.log_softmax(-1).gather(1, target[:, None]).squeeze(1)         # [R]
        out[torch.from_numpy(plan["slot"][r0:r1])] = logprob.cpu()

    flat = out.double().numpy()
    bounds = np.cumsum([0] + [len(p) for p in enc.scored])
    return enc, [flat[bounds[i]:bounds[i + 1]] for i in range(len(enc.scored))]


def score_sentences(
    model: torch.nn.Module,
    tokenizer,
    sentences: str | Sequence[str],
    metric: str = "pll",
    reduction: str = "sum",
    per_token: bool = False,
    batch_tokens: int | None = None,
    max_length: int | None = None,
) -> Any:
    """Score sentences; see the module docstring for the metrics.

    Returns one float per sentence (the sum or the mean of its token log-probabilities, in nats), a
    list for a list, a float for a string. With ``per_token=True`` each result is instead a dict
    ``{"score": float, "tokens": [(token string, logprob), ...]}`` over the scored tokens in order.
    """
    check_metric(metric, reduction)
    single = isinstance(sentences, str)
    texts = [sentences] if single else list(sentences)
    if not texts:
        raise InputError("no sentences given; pass a sentence or a list of them")
    enc, logprobs = token_logprobs(model, tokenizer, texts, metric, batch_tokens, max_length)
    results: list[Any] = []
    for s, lp in enumerate(logprobs):
        value = float(lp.sum() if reduction == "sum" else lp.mean())
        if per_token:
            ids = enc.ids[enc.starts[s] + torch.from_numpy(enc.scored[s])].tolist()
            tokens = [(tokenizer.id_to_token(t), float(x)) for t, x in zip(ids, lp)]
            results.append({"score": value, "tokens": tokens})
        else:
            results.append(value)
    return results[0] if single else results
