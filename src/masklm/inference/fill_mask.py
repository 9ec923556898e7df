"""Fill-mask: the top-k tokens at each mask, in the Hugging Face fill-mask pipeline's output schema.

Each candidate is ``{score, token, token_str, sequence}``. ``score`` is the softmax probability at that
mask alone (independent per-position marginals); ``token_str`` is ``decode([id])`` and ``sequence`` the
input with the candidate filled in, decoded with special tokens dropped when the input has one mask and
kept when it has several (so the other masks show), as Hugging Face does.

The encoder runs on the whole padded batch ``[B, T]``; the MLM head runs only at the masks (``[M, D]``
-> ``[M, V]``). A model trained with ``mntp`` predicts the token at j from position j - 1, so the head
reads there (``mask_shift`` 1, from ``objectives.reading``).
"""

from __future__ import annotations

import sys

import torch

from masklm.errors import InputError
from masklm.inference.batching import encode, pad


class FillMask:
    """Fill-mask over ``model`` and ``tokenizer``; remembers decoded token strings across calls."""

    def __init__(self, model: torch.nn.Module, tokenizer, mask_shift: int, max_length: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.mask_shift = mask_shift
        self.max_length = max_length
        self._token_strs: dict[int, str] = {}  # token id -> decode([id]), filled as candidates meet them

    def __call__(self, inputs: str | list[str], top_k: int = 5, targets: str | list[str] | None = None,
                 batch_size: int = 64) -> list:
        """Top-k predictions at each mask (``Pipeline.fill_mask``).

        One input with one mask gives a list of candidates; several masks give one such list per mask; a
        list of inputs gives one result per input (a one-element list is unwrapped, as in Hugging Face's
        pipeline).
        """
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        if not texts:
            raise InputError("no inputs given; pass a text with [MASK] or a list of them")
        rows = [enc.ids for enc in encode(self.tokenizer, texts, self.max_length)]
        results = self.encoded(rows, top_k=top_k, targets=targets, batch_size=batch_size)
        return results[0] if single or len(results) == 1 else results

    @torch.no_grad()
    def encoded(self, encoded: list[list[int]], top_k: int = 5, targets: str | list[str] | None = None,
                batch_size: int = 64) -> list:
        """Fill-mask on token ids already made (special tokens included): one result per row, never
        unwrapped (``Pipeline.fill_mask_encoded``, for callers that tokenized already, such as the server)."""
        if top_k < 1:
            raise InputError(f"top_k must be >= 1, got {top_k}")
        tok = self.tokenizer
        for i, ids in enumerate(encoded):
            if tok.mask_id not in ids:
                raise InputError(f"no {tok.mask_token} in input {i} ({tok.decode(ids)[:60]!r}); "
                                 f"put {tok.mask_token} where a word should be predicted")
        device = next(self.model.parameters()).device
        target_ids = torch.tensor(self._target_ids(targets), device=device) if targets is not None else None
        k = min(top_k, len(target_ids)) if target_ids is not None else min(top_k, self.model.config.vocab_size)

        results = []
        for lo in range(0, len(encoded), batch_size):
            chunk = encoded[lo:lo + batch_size]
            input_ids, attention_mask = (t.to(device) for t in pad(chunk, tok.pad_id))    # [B, T] each
            hidden = self.model.encode(input_ids, attention_mask=attention_mask)           # [B, T, D]
            rows, cols = (input_ids == tok.mask_id).nonzero(as_tuple=True)                 # [M] each, row-major
            logits = self.model.predict(hidden[rows, cols - self.mask_shift]).float()      # [M, V]
            probs = logits.softmax(-1)
            if target_ids is not None:
                probs = probs[:, target_ids]
            scores, idx = probs.topk(k, dim=-1)                                            # [M, k] each
            if target_ids is not None:
                idx = target_ids[idx]
            results.extend(self._candidates(chunk, scores.tolist(), idx.tolist()))
        return results

    def _target_ids(self, targets: str | list[str]) -> list[int]:
        """Vocabulary ids for ``targets`` (``target_ids``), saying on stderr which words were replaced."""
        ids, replaced = target_ids(self.tokenizer, targets)
        for word, piece in replaced.items():
            print(f"masklm: target {word!r} is not in the vocabulary; using its first piece {piece!r}", file=sys.stderr)
        return ids

    def _candidates(self, chunk: list[list[int]], scores: list[list[float]], idx: list[list[int]]) -> list:
        """The pipeline's dicts for each row of ``chunk``; ``scores``/``idx`` hold one row per mask.

        All sequences of a chunk are decoded in one batch call per ``skip_special_tokens`` setting.
        """
        mask_id = self.tokenizer.mask_id
        token_str = self._token_strs
        rows = []        # per input: per mask: [(score, token id, skip_special, index in filled[skip_special])]
        filled: dict[bool, list[list[int]]] = {True: [], False: []}
        m = 0
        for ids in chunk:
            positions = [p for p, t in enumerate(ids) if t == mask_id]
            skip = len(positions) == 1
            per_mask = []
            for pos in positions:
                cands = []
                for s, tid in zip(scores[m], idx[m]):
                    if tid not in token_str:
                        token_str[tid] = self.tokenizer.decode([tid], skip_special_tokens=False)
                    row = list(ids)
                    row[pos] = tid
                    cands.append((s, tid, skip, len(filled[skip])))
                    filled[skip].append(row)
                per_mask.append(cands)
                m += 1
            rows.append(per_mask)
        decoded = {skip: self.tokenizer.decode_batch(seqs, skip_special_tokens=skip) if seqs else []
                   for skip, seqs in filled.items()}
        results = []
        for per_mask in rows:
            out = [[{"score": s, "token": tid, "token_str": token_str[tid], "sequence": decoded[skip][slot]}
                    for s, tid, skip, slot in cands] for cands in per_mask]
            results.append(out[0] if len(out) == 1 else out)
        return results


def target_ids(tokenizer, targets: str | list[str]) -> tuple[list[int], dict[str, str]]:
    """Vocabulary ids for ``targets`` (each once) and ``{word: piece}`` for the words outside the vocabulary,
    which are scored as their first piece, as Hugging Face's fill-mask pipeline does. InputError for no
    targets or a word that gives no tokens."""
    if isinstance(targets, str):
        targets = [targets]
    if not targets:
        raise InputError("targets is empty; pass at least one word or leave it out")
    ids, replaced = [], {}
    for word in targets:
        tid = tokenizer.token_to_id(word)
        if tid is None:
            pieces = tokenizer.encode(word, add_special_tokens=False).ids
            if not pieces:
                raise InputError(f"target {word!r} gives no tokens; pass a word the tokenizer knows")
            tid = pieces[0]
            replaced[word] = tokenizer.id_to_token(tid)
        ids.append(tid)
    return list(dict.fromkeys(ids)), replaced

