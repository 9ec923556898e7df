"""The pipeline: a loaded model folder and the tasks it serves.

``pipe = masklm.load(dir)`` gives ``pipe.model``, ``pipe.tokenizer``, ``pipe.config`` and the tasks.
``fill_mask`` follows the Hugging Face fill-mask pipeline's output schema (``score``, ``token``,
``token_str``, ``sequence``) and runs the MLM head only at the mask positions.

A model trained with ``mntp`` (GPT-BERT's masked next-token prediction) predicts the token at j from
position j - 1. The folder's ``training_args.json`` says so: ``pipe.mask_shift`` is then 1, ``fill_mask``
reads there, and ``score`` defaults to the ``mntp`` metric instead of ``pll``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from masklm.errors import InputError
from masklm.modeldir import load_model_dir, read_objectives, save_model_dir
from masklm.objectives.reading import TrainedAs
from masklm.training.distributed import pick_device


def load(path: str | Path, device: str | None = None) -> Pipeline:
    """Load a model folder (as written by ``masklm train`` or ``import-hf``) for inference."""
    dev = pick_device(device)
    model, config, tokenizer = load_model_dir(path, device=str(dev))
    return Pipeline(model, tokenizer, path=Path(path))


class Pipeline:
    def __init__(self, model: torch.nn.Module, tokenizer, path: Path | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        self.path = path
        self.objectives = read_objectives(path)   # from training_args.json; None when unknown
        self.trained_as = TrainedAs.from_names(self.objectives)
        self.mask_shift = self.trained_as.mask_shift
        self._warned: set[str] = set()          # metrics already warned about (resolve_metric)
        self._token_strs: dict[int, str] = {}  # token id -> decode([id]), filled as fill_mask meets them

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_length(self) -> int:
        return self.config.max_position_embeddings

    @property
    def default_metric(self) -> str:
        """The sentence score that matches how the model was trained (``objectives.reading``): ``causal``
        for a causal LM, ``mntp`` when masks are read one position to the left, else ``pll``."""
        return self.trained_as.default_metric

    def resolve_metric(self, metric: str | None) -> str:
        """``metric``, or ``default_metric`` for None. A metric the model was not trained for (known from
        ``training_args.json``) is allowed, with a one-time warning naming the one that fits."""
        metric = metric or self.default_metric
        if not self.trained_as.fits(metric) and metric not in self._warned:
            self._warned.add(metric)
            print(f"masklm: warning: the {metric} score reads this model in a way it was not trained for "
                  f"(objectives: {self.trained_as.describe()}); {self.default_metric} fits it", file=sys.stderr)
        return metric

    def save(self, path: str | Path) -> Path:
        return save_model_dir(path, self.model, self.tokenizer)

    # ---- shared helpers -----------------------------------------------------------------------

    def _encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids with special tokens; a clear error for empty or over-long inputs."""
        encoded = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"input {i} is {type(text).__name__}, not a string; pass text")
            ids = self.tokenizer.encode(text).ids
            if len(ids) > self.max_length:
                raise InputError(
                    f"input {i} is {len(ids)} tokens long, more than the model's maximum of {self.max_length}; "
                    "shorten it (nothing is truncated silently)"
                )
            encoded.append(ids)
        return encoded

    def _pad(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, T]`` ids and attention mask, right-padded to the longest input."""
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_id
        input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in ids], dtype=torch.long)
        attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids], dtype=torch.long)
        return input_ids.to(self.device), attention_mask.to(self.device)

    # ---- fill-mask ----------------------------------------------------------------------------

    def _target_ids(self, targets: str | list[str]) -> list[int]:
        """Vocabulary ids for ``targets``; a word outside the vocabulary uses its first piece, as HF does."""
        if isinstance(targets, str):
            targets = [targets]
        if not targets:
            raise InputError("targets is empty; pass at least one word or leave it out")
        ids = []
        for word in targets:
            tid = self.tokenizer.token_to_id(word)
            if tid is None:
                pieces = self.tokenizer.encode(word, add_special_tokens=False).ids
                if not pieces:
                    raise InputError(f"target {word!r} gives no tokens; pass a word the tokenizer knows")
                tid = pieces[0]
                print(f"masklm: target {word!r} is not in the vocabulary; using its first piece "
                      f"{self.tokenizer.id_to_token(tid)!r}", file=sys.stderr)
            ids.append(tid)
        return list(dict.fromkeys(ids))

    def fill_mask(self, inputs: str | list[str], top_k: int = 5, targets: str | list[str] | None = None,
                  batch_size: int = 64) -> list:
        """Top-k predictions at each [MASK].

        One input with one mask gives a list of ``{score, token, token_str, sequence}``; several masks
        give one such list per mask; a list of inputs gives one result per input (a one-element list is
        unwrapped, as in Hugging Face's pipeline). Scores are independent per-position marginals.
        """
        single = isinstance(inputs, str)
        texts = [inputs] if single else list(inputs)
        if not texts:
            raise InputError("no inputs given; pass a text with [MASK] or a list of them")
        results = self.fill_mask_encoded(self._encode(texts), top_k=top_k, targets=targets, batch_size=batch_size)
        return results[0] if single or len(results) == 1 else results

    @torch.no_grad()
    def fill_mask_encoded(self, encoded: list[list[int]], top_k: int = 5, targets: str | list[str] | None = None,
                          batch_size: int = 64) -> list:
        """``fill_mask`` on token ids already made (special tokens included): one result per row, never
        unwrapped. For callers that tokenized already, such as the server."""
        if top_k < 1:
            raise InputError(f"top_k must be >= 1, got {top_k}")
        mask_id = self.tokenizer.mask_id
        for i, ids in enumerate(encoded):
            if mask_id not in ids:
                raise InputError(f"no {self.tokenizer.mask_token} in input {i} "
                                 f"({self.tokenizer.decode(ids)[:60]!r}); "
                                 f"put {self.tokenizer.mask_token} where a word should be predicted")
        target_ids = torch.tensor(self._target_ids(targets), device=self.device) if targets is not None else None
        k = min(top_k, len(target_ids)) if target_ids is not None else min(top_k, self.config.vocab_size)

        results = []
        for lo in range(0, len(encoded), batch_size):
            chunk = encoded[lo:lo + batch_size]
            input_ids, attention_mask = self._pad(chunk)
            hidden = self.model.encode(input_ids, attention_mask=attention_mask)   # [B, T, D]
            rows, cols = (input_ids == mask_id).nonzero(as_tuple=True)             # [M] each, row-major
            logits = self.model.predict(hidden[rows, cols - self.mask_shift]).float()  # [M, V], head at the masks
            probs = logits.softmax(-1)
            if target_ids is not None:
                probs = probs[:, target_ids]
            scores, idx = probs.topk(k, dim=-1)
            if target_ids is not None:
                idx = target_ids[idx]
            results.extend(self._candidates(chunk, scores.tolist(), idx.tolist()))
        return results

    def _candidates(self, chunk: list[list[int]], scores: list[list[float]], idx: list[list[int]]) -> list:
        """The pipeline's dicts for each row of ``chunk``; ``scores``/``idx`` hold one row per mask.

        As in HF, ``token_str`` is ``decode([id])`` and ``sequence`` is the filled input decoded, with
        special tokens kept when the input has several masks (so the other masks show). All sequences of
        a chunk are decoded in one batch call per ``skip_special_tokens`` setting.
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

    # ---- scoring and embeddings (the work is in masklm.scoring and masklm.inference.embed) ------

    def score(self, sentences: str | list[str], metric: str | None = None, reduction: str = "sum",
              per_token: bool = False, batch_tokens: int | None = None) -> Any:
        """Sentence log-probabilities (nats): ``pll``, ``pll-word-l2r``, ``causal`` or ``mntp``
        (default: ``default_metric``; see ``resolve_metric``).

        A float per sentence (a list for a list); with ``per_token=True`` a dict
        ``{"score", "tokens": [(token, logprob), ...]}`` each. See ``masklm.scoring.pll``.
        """
        from masklm.scoring.pll import score_sentences

        return score_sentences(self.model, self.tokenizer, sentences, metric=self.resolve_metric(metric),
                               reduction=reduction, per_token=per_token, batch_tokens=batch_tokens,
                               max_length=self.max_length)

    def generate(self, prompt: str | list[str | None] | None = None, **kwargs: Any) -> Any:
        """Generate text (``strategy`` = mask-predict, confidence, diffusion or autoregressive).

        One prompt (or None, or ``template="The [MASK]*5 of the king"``) gives one dict
        ``{text, generated, tokens, token_ids, network_calls, seconds, strategy, steps}``; a list gives a
        list of them, decoded in one batch. See ``masklm.generation.generate`` for the parameters; the
        model folder's ``training_args.json`` supplies ``objectives`` unless given.
        """
        from masklm.generation import generate

        kwargs.setdefault("objectives", self.objectives)
        kwargs.setdefault("max_length", self.max_length)
        out = generate(self.model, self.tokenizer, prompt, **kwargs)
        shared = {k: out[k] for k in ("network_calls", "seconds", "strategy", "steps")}
        results = [r | shared for r in out["results"]]
        many = isinstance(prompt, list) or isinstance(kwargs.get("template"), list)
        return results if many else results[0]

    def embed(self, texts: str | list[str], pooling: str = "mean", normalize: bool = True,
              batch_tokens: int | None = None):
        """Sentence embeddings: float32 numpy ``[N, D]`` (``[D]`` for one string). See ``masklm.inference.embed``."""
        from masklm.inference.embed import embed_texts

        return embed_texts(self.model, self.tokenizer, texts, pooling=pooling, normalize=normalize,
                           batch_tokens=batch_tokens, max_length=self.max_length)

    # ---- fine-tuned heads (the work is in masklm.finetune.predict) -------------------------------

    def classify(self, texts: Any, top_k: int | None = 1, batch_size: int = 32) -> Any:
        """Labels ``{"label", "score"}`` (regression: ``{"value"}``) of a fine-tuned folder, for a text, a
        ``(text, pair)`` tuple or a list of them. See ``masklm.finetune.predict``."""
        from masklm.finetune.predict import classify

        return classify(self.model, self.tokenizer, texts, top_k=top_k, batch_size=batch_size)

    def tag(self, texts: Any, aggregate: bool = True, batch_size: int = 32) -> Any:
        """Entities ``{"entity_group", "score", "word", "start", "end"}`` of a fine-tuned tagger, for a
        text or a list of texts / pre-split word lists. See ``masklm.finetune.predict``."""
        from masklm.finetune.predict import tag

        return tag(self.model, self.tokenizer, texts, aggregate=aggregate, batch_size=batch_size)
