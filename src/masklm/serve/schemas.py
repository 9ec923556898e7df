"""Request bodies. Unknown fields are rejected (422) and types are strict: ``"5"`` is not a ``top_k``.

``/generate``'s parameters are ``GenerationConfig``'s request fields (``REQUEST_FIELDS``) with that
dataclass's own types, so a string temperature, a float seed or a seed of 2^70 is a 422 naming the
field, never an error inside the generator; numbers must also be finite.
"""

from __future__ import annotations

from typing import Any, Literal, get_args, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from masklm.generation.config import REQUEST_FIELDS, GenerationConfig
from masklm.serve.generation import SEED_LIMIT

Texts = str | list[str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class FillMaskParameters(_Strict):
    top_k: int = Field(5, description="candidates per mask")
    targets: Texts | None = Field(None, description="only rank these words")


class FillMaskRequest(_Strict):
    """The Hugging Face fill-mask task schema."""

    inputs: Texts = Field(..., description="text(s) containing the mask token", examples=["the cat [MASK] ."])
    parameters: FillMaskParameters = Field(default_factory=FillMaskParameters)
    options: dict[str, Any] | None = Field(None, description="accepted for Hugging Face compatibility; ignored")


class ScoreParameters(_Strict):
    metric: Literal["pll", "pll-word-l2r", "causal", "mntp"] | None = Field(
        None, description="default: mntp for models trained with mntp (GPT-BERT), else pll; see GET /info")
    reduction: Literal["sum", "mean"] = "sum"
    per_token: bool = False


class ScoreRequest(_Strict):
    """Sentence log-probabilities (nats); one ``{"score"}`` (plus ``"tokens"``) per input."""

    inputs: Texts = Field(..., examples=["the cat sat on the mat ."])
    parameters: ScoreParameters = Field(default_factory=ScoreParameters)


class EmbedRequest(_Strict):
    """text-embeddings-inference's ``/embed``: ``[[float]]``, one vector per input."""

    inputs: Texts = Field(..., examples=["the cat sat on the mat ."])
    normalize: bool = True
    pooling: Literal["mean", "cls"] = "mean"
    # Inputs longer than the model reads are read in overlapping windows (a quarter of a window shared) and
    # their vectors combined by ``window_pool``; each input may then hold up to --max-batch-tokens tokens.
    windows: bool = False
    window_pool: Literal["mean", "max"] = "mean"


class OpenAIEmbeddingRequest(_Strict):
    """OpenAI's ``/v1/embeddings`` (text input only)."""

    input: Texts = Field(..., examples=["the cat sat on the mat ."])
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class TokenizeRequest(_Strict):
    """text-embeddings-inference's ``/tokenize``: per input, ``{id, text, special, start, stop}`` per token."""

    inputs: Texts = Field(..., examples=["the cat sat on the mat ."])
    add_special_tokens: bool = True


# Bounds a type cannot say, checked before GenerationConfig sees the values: a seed torch.Generator takes,
# a choice temperature that is a temperature.
GENERATE_BOUNDS: dict[str, dict[str, Any]] = {"seed": {"ge": 0, "le": SEED_LIMIT}, "choice_temperature": {"ge": 0}}


def _generate_parameters() -> type[BaseModel]:
    """The parameters model: each request field of GenerationConfig, optional, with its type; plus
    ``template``."""
    hints = get_type_hints(GenerationConfig)
    fields: dict[str, Any] = {"template": (str | None, Field(None, description=(
        "text whose mask tokens are filled; MASK*N stands for N of them")))}
    for name in REQUEST_FIELDS:
        hint = hints[name]
        bounds = dict(GENERATE_BOUNDS.get(name, {}))
        if hint is float or float in get_args(hint):
            bounds["allow_inf_nan"] = False
        fields[name] = (hint | None, Field(None, **bounds))
    return create_model("GenerateParameters", __base__=_Strict, **fields)


GenerateParameters = _generate_parameters()


class GenerateRequest(_Strict):
    """Iterative unmasking; ``parameters`` are the keyword arguments of ``Pipeline.generate``."""

    prompt: str | None = Field(None, description="text to continue or fill; may hold mask tokens")
    parameters: GenerateParameters = Field(  # type: ignore[valid-type]
        default_factory=GenerateParameters, examples=[{"length": 16, "steps": 8, "seed": 0}])
    return_steps: bool = Field(False, description=(
        'true adds the canvas after every network call: "canvas", the starting tokens (the prompt or template '
        'with a mask token at each position to generate), and "trace", one entry per network call in order '
        '(len(trace) == network_calls), each {"tokens": the canvas after that call as token pieces, "committed": '
        'indices into tokens that went from the mask token to a token at that call, "remasked": indices that '
        'went from a token back to the mask token (mask-predict revising its least confident choices)}. '
        "Special tokens are left out, but for the [SEP] that ended a stop_at_sep text. Not with length_beam."))


class QuestionAnsweringRequest(_Strict):
    """Hugging Face's question-answering pipeline: ``question`` and ``context`` (strings, or lists of one
    length; one string goes with every item of the other's list) -> ``{"score", "start", "end", "answer"}``
    per pair (one object for two strings), ``start``/``end`` character offsets into the context. A
    context longer than the server's ``max_tokens`` is read in overlapping windows."""

    question: Texts = Field(..., examples=["what is the code ?"])
    context: Texts = Field(..., examples=["the cat sat on the mat . the code is tango ."])
    max_answer_len: int | None = Field(None, description="longest answer in tokens (default: the model folder's)")
    handle_impossible_answer: bool | None = Field(None, description=(
        "true: answer '' when the no-answer ([CLS]) score beats the best span's (by more than the folder's "
        "threshold, else 0); false: always a span; default: as the model was fine-tuned (SQuAD v2.0 data: true)"))
