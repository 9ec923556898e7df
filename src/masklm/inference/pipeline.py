"""The pipeline: a loaded model folder and the tasks it serves.

``pipe = masklm.load(dir)`` gives ``pipe.model``, ``pipe.tokenizer``, ``pipe.config`` and the tasks. Each
task's work is in its own module: ``fill_mask`` (``masklm.inference.fill_mask``), ``score``
(``masklm.scoring``), ``embed`` (``masklm.inference.embed``), ``generate`` (``masklm.generation``),
``classify``, ``tag`` and ``answer`` (``masklm.finetune.predict``, for fine-tuned folders).

How the weights were trained (the folder's ``training_args.json``) decides how they are read
(``masklm.objectives.reading``): a model trained with ``mntp`` (GPT-BERT's masked next-token prediction)
predicts the token at j from position j - 1, so ``pipe.mask_shift`` is 1, ``fill_mask`` reads there, and
``score`` defaults to the ``mntp`` metric instead of ``pll``.

``load(dir, dtype="bfloat16")`` casts the weights for inference (half the memory; faster on GPUs and on
CPUs with bf16 arithmetic); the tasks upcast logits to fp32 before softmax, so scores stay comparable.
``compile=True`` compiles the model's ``encode``/``predict`` with ``torch.compile`` (``training.precision``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from masklm.errors import InputError
from masklm.finetune.folder import load_folder
from masklm.finetune.predict import answer, classify, tag
from masklm.generation import CALL_FIELDS, GenerationConfig, generate
from masklm.inference.batching import max_input_length
from masklm.inference.embed import embed_texts
from masklm.inference.fill_mask import FillMask
from masklm.modeldir import read_masklm_version, read_objectives, save_model_dir
from masklm.objectives.reading import TrainedAs
from masklm.scoring.pll import score_sentences
from masklm.training.distributed import pick_device
from masklm.training.precision import compile_for_inference, resolve_dtype


def _log(message: str) -> None:
    print(f"masklm: {message}", file=sys.stderr, flush=True)


def load(path: str | Path, device: str | None = None, dtype: str | torch.dtype | None = None,
         compile: bool = False) -> Pipeline:
    """Load a model folder (as written by ``masklm train``, ``finetune`` or ``import-hf``) for inference.

    dtype: ``float32`` (as saved), ``bfloat16`` or ``float16`` (or the torch dtype); compile: torch.compile
    the model (the first call of each input shape compiles; an eager fallback says so on stderr)."""
    torch_dtype = resolve_dtype(dtype)  # a bad name fails before the folder is read
    model, _, tokenizer = load_folder(path, device=str(pick_device(device)))
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    if compile:
        compile_for_inference(model, next(model.parameters()).device, _log)
    return Pipeline(model, tokenizer, path=Path(path))


class Pipeline:
    def __init__(self, model: torch.nn.Module, tokenizer, path: Path | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        self.path = path
        self.objectives = read_objectives(path)   # from training_args.json; None when unknown
        self.masklm_version = read_masklm_version(path)  # that saved the folder; None when unknown
        self.trained_as = TrainedAs.from_names(self.objectives)
        self._warned: set[str] = set()          # metrics already warned about (resolve_metric)
        self._fill_mask = FillMask(model, tokenizer, self.mask_shift, self.max_length)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def max_length(self) -> int:
        """The longest input read in one piece (``inference.batching.max_input_length``)."""
        return max_input_length(self.config, self.tokenizer)

    @property
    def mask_shift(self) -> int:
        """1 when a masked token's prediction is read one position to its left (``objectives.reading``)."""
        return self.trained_as.mask_shift

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

    # ---- fill-mask (the work is in masklm.inference.fill_mask) ----------------------------------

    def fill_mask(self, inputs: str | list[str], top_k: int = 5, targets: str | list[str] | None = None,
                  batch_size: int = 64) -> list:
        """Top-k predictions at each [MASK], in the Hugging Face fill-mask schema
        (``{score, token, token_str, sequence}``).

        One input with one mask gives a list of candidates; several masks give one such list per mask; a
        list of inputs gives one result per input (a one-element list is unwrapped, as in Hugging Face's
        pipeline). Scores are independent per-position marginals.
        """
        return self._fill_mask(inputs, top_k=top_k, targets=targets, batch_size=batch_size)

    def fill_mask_encoded(self, encoded: list[list[int]], top_k: int = 5, targets: str | list[str] | None = None,
                          batch_size: int = 64) -> list:
        """``fill_mask`` on token ids already made (special tokens included): one result per row, never
        unwrapped. For callers that tokenized already, such as the server."""
        return self._fill_mask.encoded(encoded, top_k=top_k, targets=targets, batch_size=batch_size)

    # ---- scoring and embeddings (the work is in masklm.scoring and masklm.inference.embed) ------

    def score(self, sentences: str | list[str], metric: str | None = None, reduction: str = "sum",
              per_token: bool = False, batch_tokens: int | None = None) -> Any:
        """Sentence log-probabilities (nats): ``pll``, ``pll-word-l2r``, ``causal`` or ``mntp``
        (default: ``default_metric``; see ``resolve_metric``).

        A float per sentence (a list for a list); with ``per_token=True`` a dict
        ``{"score", "tokens": [(token, logprob), ...]}`` each. See ``masklm.scoring.pll``.
        """
        return score_sentences(self.model, self.tokenizer, sentences, metric=self.resolve_metric(metric),
                               reduction=reduction, per_token=per_token, batch_tokens=batch_tokens,
                               max_length=self.max_length)

    def generate(self, prompt: str | list[str | None] | None = None, **kwargs: Any) -> Any:
        """Generate text (``strategy`` = one of ``masklm.generation.STRATEGIES``; None or left out: picked
        from the model's objectives, ``why`` says how).

        One prompt (or None, or ``template="The [MASK]*5 of the king"``) gives one dict
        ``{text, generated, tokens, token_ids, network_calls, seconds, strategy, steps}``; a list gives a
        list of them, decoded in one batch. See ``masklm.generation.generate`` for the parameters; the
        model folder's ``training_args.json`` supplies ``objectives`` unless given. ``kwargs`` are
        ``template`` and the fields of ``masklm.generation.GenerationConfig``.
        """
        if (task := getattr(self.model, "task", None)) is not None:  # before any strategy meets the missing head
            raise InputError(f"this folder is a fine-tuned {task['type']} model: it has no masked-LM head, so it "
                             "cannot generate text; generate with the pretrained folder it was fine-tuned from")
        template = kwargs.pop("template", None)
        kwargs.setdefault("strategy", None)  # None: picked from the objectives (docs/generation.md, "The default")
        config = GenerationConfig(**{"objectives": self.objectives, "max_length": self.max_length, **kwargs})
        out = generate(self.model, self.tokenizer, prompt, config, template=template)
        shared = {k: out[k] for k in CALL_FIELDS}
        results = [r | shared for r in out["results"]]
        many = isinstance(prompt, list) or isinstance(template, list)
        return results if many else results[0]

    def embed(self, texts: str | list[str], pooling: str = "mean", normalize: bool = True,
              batch_tokens: int | None = None, windows: Any = None, windows_used: list[int] | None = None
              ) -> np.ndarray:
        """Sentence embeddings: float32 numpy ``[N, D]`` (``[D]`` for one string); ``windows`` (True or a
        ``WindowSpec``) reads texts of any length in overlapping windows. See ``masklm.inference.embed``."""
        return embed_texts(self.model, self.tokenizer, texts, pooling=pooling, normalize=normalize,
                           batch_tokens=batch_tokens, max_length=self.max_length, windows=windows,
                           windows_used=windows_used)

    # ---- fine-tuned heads (the work is in masklm.finetune.predict) -------------------------------

    def classify(self, texts: Any, top_k: int | None = 1, batch_size: int = 32, **windows: Any) -> Any:
        """Labels ``{"label", "score"}`` (regression: ``{"value"}``) of a fine-tuned folder, for a text, a
        ``(text, pair)`` tuple or a list of them. ``windows``/``windows_used``: see ``masklm.finetune.predict``."""
        return classify(self.model, self.tokenizer, texts, top_k=top_k, batch_size=batch_size, **windows)

    def tag(self, texts: Any, aggregate: bool = True, batch_size: int = 32, **windows: Any) -> Any:
        """Entities ``{"entity_group", "score", "word", "start", "end"}`` of a fine-tuned tagger, for a
        text or a list of texts / pre-split word lists. See ``masklm.finetune.predict``."""
        return tag(self.model, self.tokenizer, texts, aggregate=aggregate, batch_size=batch_size, **windows)

    def answer(self, inputs: Any, **options: Any) -> Any:
        """Extractive answers ``{"answer", "score", "start", "end"}`` of a fine-tuned question-answering
        folder, for ``{"question", "context"}`` or a list of them; contexts of any length (windows).
        ``options``: ``max_answer_length``, ``null_threshold``, ``batch_size``, ``windows``,
        ``windows_used``; see ``masklm.finetune.predict.answer``."""
        return answer(self.model, self.tokenizer, inputs, **options)
