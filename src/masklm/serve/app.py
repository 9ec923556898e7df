"""The FastAPI application: routes, validation and error bodies.

``create_app(pipe, limits, api_key)`` builds it around a loaded ``Pipeline``; ``masklm serve`` runs it
under uvicorn. The POST routes each take one JSON body model: FastAPI documents them (``/docs``,
``/openapi.json``) and the gate in front serves them, validating the body with the same pydantic model
without FastAPI's per-request machinery (see ``masklm.serve.gate``). Handlers check the request's
fields on the event loop, then hand the model work, tokenization included, to the ``Batcher``'s worker
thread. Every error is ``{"error", "error_type"}`` (see ``masklm.serve.responses``).
No request field names a file, a module or a command: requests carry only text and numbers.
``POST /question-answering`` answers with a fine-tuned question-answering folder, reading long contexts
in windows of at most ``max_tokens`` tokens. ``GET /`` is the playground page (``masklm.serve.page``); ``/generate`` with ``return_steps`` adds the
canvas after every network call, which the page animates (``masklm.serve.steps``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, get_type_hints

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.responses import Response

from masklm.errors import MaskLMError
from masklm.generation import STRATEGIES
from masklm.generation.config import pick_strategy
from masklm.inference.batching import too_long
from masklm.inference.fill_mask import target_ids
from masklm.serve.batching import Batcher, Job, Runner
from masklm.serve.gate import Gate
from masklm.serve.generation import check_generate
from masklm.serve.limits import Limits, ServeError, as_list, check_count, check_range, check_tokens
from masklm.serve.metrics import Metrics
from masklm.serve.page import add_page
from masklm.serve.responses import as_serve_error, error_response, json_response
from masklm.serve.schemas import (
    EmbedRequest,
    FillMaskRequest,
    GenerateRequest,
    OpenAIEmbeddingRequest,
    QuestionAnsweringRequest,
    ScoreRequest,
    TokenizeRequest,
)
from masklm.version import __version__

JsonRoute = tuple[type[BaseModel], Callable[[Any], Awaitable[Response]]]


def read_info(pipe, limits: Limits) -> dict[str, Any]:
    """What ``GET /info`` reports: the model, its training objectives, the masklm versions that saved the
    folder and that serve it, the server's limits."""
    cfg = pipe.config
    path: Path | None = pipe.path
    return {
        "model_id": path.name if path is not None else None,
        "arch": cfg.arch,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "intermediate_size": cfg.intermediate_size,
        "parameters": sum(p.numel() for p in pipe.model.parameters()),
        "max_length": pipe.max_length,
        "mask_token": pipe.tokenizer.mask_token,
        "dtype": str(next(pipe.model.parameters()).dtype).removeprefix("torch."),
        "device": str(pipe.device),
        "objectives": pipe.objectives,
        "mask_shift": pipe.mask_shift,
        "default_score_metric": pipe.default_metric,
        "model_masklm_version": pipe.masklm_version,
        "masklm_version": __version__,
        "strategies": list(STRATEGIES),
        # what POST /generate runs for a prompt without a strategy or steps (a template gets confidence)
        "default_strategy": dict(zip(("strategy", "why"), pick_strategy(pipe.objectives))),
        "limits": limits.as_dict(),
    }


class ModelRoutes:
    """The POST routes. Each checks its request's fields on the event loop, then awaits the batcher, whose
    worker thread does the model work (tokenization included)."""

    def __init__(self, pipe, limits: Limits, batcher: Batcher, info: dict[str, Any]) -> None:
        self.pipe = pipe
        self.limits = limits
        self.batcher = batcher
        self.info = info

    async def fill_mask(self, body: FillMaskRequest) -> Response:
        texts = as_list(body.inputs)
        check_count(texts, self.limits)
        p = body.parameters
        check_range("parameters.top_k", p.top_k, 1, self.limits.max_top_k)
        targets = None
        if p.targets is not None:
            targets = as_list(p.targets, "parameters.targets")
            if len(targets) > self.limits.max_targets:
                raise ServeError(f"parameters.targets has {len(targets)} words, more than this server's "
                                 f"limit of {self.limits.max_targets}", "too_large")
            if not all(t.strip() for t in targets):
                raise ServeError("parameters.targets holds an empty word; pass words the tokenizer knows")
        job = Job("fill_mask", (tuple(targets) if targets else None,), texts, {"top_k": p.top_k, "targets": targets})
        result = await self.batcher.submit(job)
        # a target outside the vocabulary is scored as its first piece (Hugging Face's rule); the server's log
        # is no place to tell the client, so a header maps each one to the piece used (JSON, ASCII-escaped)
        replaced = target_ids(self.pipe.tokenizer, targets)[1] if targets else {}
        return json_response(result, headers={"X-Targets-Replaced": json.dumps(replaced)} if replaced else None)

    async def score(self, body: ScoreRequest) -> Response:
        texts = as_list(body.inputs)
        check_count(texts, self.limits)
        p = body.parameters.model_dump()
        job = Job("score", (p["metric"], p["reduction"], p["per_token"]), texts, p)
        out = []
        for r in await self.batcher.submit(job):
            if isinstance(r, dict):
                out.append({"score": r["score"],
                            "tokens": [{"token": t, "logprob": lp} for t, lp in r["tokens"]]})
            else:
                out.append({"score": r})
        return json_response(out)

    async def _embed(self, texts: list[str], pooling: str, normalize: bool, window_pool: str | None = None
                     ) -> tuple[Any, int]:
        """Vectors of ``texts``; ``window_pool`` (mean or max) reads long inputs in windows, None refuses them."""
        check_count(texts, self.limits)
        params = {"pooling": pooling, "normalize": normalize, "window_pool": window_pool}
        job = Job("embed", (pooling, normalize, window_pool), texts, params)
        return await self.batcher.submit(job), sum(map(len, job.ids))

    async def embed(self, body: EmbedRequest) -> Response:
        pool = body.window_pool if body.windows else None
        result, _ = await self._embed(as_list(body.inputs), body.pooling, body.normalize, pool)
        if pool is None:
            return json_response(result)
        vectors, windows = result  # the body keeps TEI's schema; the windows read per input go in a header
        return json_response(vectors, headers={"X-Windows": ",".join(map(str, windows))})

    async def openai_embeddings(self, body: OpenAIEmbeddingRequest) -> Response:
        hidden_size = self.pipe.config.hidden_size
        if body.dimensions is not None and body.dimensions != hidden_size:
            raise ServeError(f"dimensions={body.dimensions}: this model's embeddings have "
                             f"{hidden_size} dimensions; leave dimensions out")
        vectors, n_tokens = await self._embed(as_list(body.input, "input"), "mean", True)
        data = []
        for i, vec in enumerate(vectors):
            emb = (base64.b64encode(vec.astype("<f4").tobytes()).decode() if body.encoding_format == "base64"
                   else vec)
            data.append({"object": "embedding", "embedding": emb, "index": i})
        return json_response({"object": "list", "data": data, "model": body.model or self.info["model_id"],
                              "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}})

    async def tokenize(self, body: TokenizeRequest) -> Response:
        texts = as_list(body.inputs)
        check_count(texts, self.limits)
        out = []
        for i, enc in enumerate(self.pipe.tokenizer.encode_batch(texts, add_special_tokens=body.add_special_tokens)):
            check_tokens(len(enc.ids), self.limits, f"inputs[{i}]")
            out.append([{"id": t, "text": s, "special": bool(sp), "start": a, "stop": b}
                        for t, s, sp, (a, b) in zip(enc.ids, enc.tokens, enc.special_tokens_mask, enc.offsets)])
        return json_response(out)

    async def generate(self, body: GenerateRequest) -> Response:
        params = check_generate(body.prompt, body.parameters.model_dump(exclude_none=True), self.limits,
                                self.pipe.tokenizer, self.pipe.objectives)
        # Pipeline.generate gives one result dict for one prompt or template: the text, tokens and timings;
        # with return_steps the worker also reads the canvas after every network call (masklm.serve.steps)
        kind = "generate_steps" if body.return_steps else "generate"
        result = await self.batcher.submit(Job(kind, (), [body.prompt or ""], params))
        return json_response({**result, "seed": params["seed"]})  # the seed drawn when the request gave none


    async def question_answering(self, body: QuestionAnsweringRequest) -> Response:
        pairs = _qa_pairs(body.question, body.context)
        check_count(pairs, self.limits, "question")
        task = getattr(self.pipe.model, "task", None) or {}
        if task.get("type") != "question-answering":
            raise ServeError("this server's model is not fine-tuned for question answering; serve a folder "
                             "written by 'masklm finetune --task question-answering'")
        check_range("max_answer_len", body.max_answer_len, 1, self.limits.max_tokens)
        tok = self.pipe.tokenizer
        for i, (question, context) in enumerate(pairs):  # the question and 3 special tokens fill every window
            check_tokens(len(tok.encode(question, add_special_tokens=False).ids) + 3, self.limits, f"question[{i}]")
            n = len(tok.encode(context, add_special_tokens=False).ids)
            if n > self.limits.max_batch_tokens:
                raise ServeError(too_long(f"context[{i}]", n, self.limits.max_batch_tokens, "this server's limit "
                                          "(--max-batch-tokens) for a context read in windows"), "too_large")
        threshold: Any = "folder"
        if body.handle_impossible_answer is not None:
            threshold = (task.get("null_threshold") or 0.0) if body.handle_impossible_answer else None
        params = {"max_answer_length": body.max_answer_len, "null_threshold": threshold,
                  "max_length": self.limits.max_tokens}
        results = await self.batcher.submit(Job("question_answering", (), [q for q, _ in pairs],
                                                {"pairs": pairs, "options": params}))
        single = isinstance(body.question, str) and isinstance(body.context, str)
        return json_response(results[0] if single else results)


def _qa_pairs(question: str | list[str], context: str | list[str]) -> list[tuple[str, str]]:
    """(question, context) pairs: lists of one length pair up; a string goes with each item of a list."""
    questions, contexts = as_list(question, "question"), as_list(context, "context")
    if len(questions) == 1 < len(contexts):
        questions = questions * len(contexts)
    if len(contexts) == 1 < len(questions):
        contexts = contexts * len(questions)
    if len(questions) != len(contexts):
        raise ServeError(f"question has {len(questions)} items and context {len(contexts)}; give one each, or "
                         "lists of one length")
    for i, (q, c) in enumerate(zip(questions, contexts)):
        if not q.strip() or not c.strip():
            raise ServeError(f"question[{i}] or context[{i}] is empty; pass some text")
    return list(zip(questions, contexts))


class AppRunner(Runner):
    """The worker's runner with the question-answering call (one request per model call: its contexts'
    windows are its batch)."""

    def question_answering(self, jobs: list[Job]) -> list[Any]:
        return [self.pipe.answer([{"question": q, "context": c} for q, c in job.params["pairs"]],
                                 batch_size=max(1, self.limits.max_batch_tokens // self.limits.max_tokens),
                                 **job.params["options"]) for job in jobs]


# (path, ModelRoutes method, summary for /docs)
POST_ROUTES = [
    ("/fill-mask", "fill_mask", "top-k tokens at each mask (Hugging Face fill-mask schema)"),
    ("/score", "score", "sentence log-probabilities: pll, pll-word-l2r, causal or mntp"),
    ("/embed", "embed", "sentence embeddings, [[float]] (text-embeddings-inference schema)"),
    ("/v1/embeddings", "openai_embeddings", "OpenAI-compatible embeddings"),
    ("/tokenize", "tokenize", "tokens with ids, text, special flag and character offsets"),
    ("/generate", "generate", "iterative unmasking (Pipeline.generate); same prompt and seed, same text; "
                              "without a seed, a random one, returned as seed"),
    ("/question-answering", "question_answering",
     "extractive answers {score, start, end, answer} (Hugging Face question-answering schema)"),
]


def create_app(pipe, limits: Limits | None = None, api_key: str | None = None) -> Any:
    """The ASGI app serving ``pipe``: FastAPI routes wrapped in the key/body-limit/metrics gate."""
    limits = (limits or Limits()).check(pipe.max_length)
    metrics = Metrics()
    batcher = Batcher(AppRunner(pipe, limits, metrics), limits, metrics)
    info = read_info(pipe, limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(title="masklm", version=__version__, lifespan=lifespan,
                  description="Fill-mask, sentence scores, generation and embeddings from a masklm model folder.")
    gate: Gate | None = None

    async def on_error(request: Request, exc: Exception) -> Response:
        err = as_serve_error(exc, request.method, request.url.path)
        metrics.error(gate.route(request.url.path) if gate else "other", err.error_type)
        return error_response(err)

    for kind in (ServeError, MaskLMError, RequestValidationError, HTTPException, Exception):
        app.add_exception_handler(kind, on_error)
    add_page(app)  # GET /: the playground page

    @app.get("/health", summary="200 while the model worker runs")
    async def health() -> Response:
        if not batcher.alive:
            raise ServeError("the model worker is not running", "unhealthy")
        return json_response({"status": "ok"})

    @app.get("/info", summary="model architecture, sizes, mask token, objectives, version, limits")
    async def get_info() -> Response:
        return json_response(info)

    @app.get("/metrics", summary="Prometheus text metrics")
    async def get_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    # Each POST route takes one JSON body model: served by the gate, documented by FastAPI.
    handlers = ModelRoutes(pipe, limits, batcher, info)
    json_routes: dict[str, JsonRoute] = {}
    for path, name, summary in POST_ROUTES:
        endpoint = getattr(handlers, name)
        json_routes[path] = (get_type_hints(endpoint)["body"], endpoint)
        app.post(path, summary=summary)(endpoint)

    gate = Gate(app, metrics, {r.path for r in app.routes}, api_key, limits.max_body_bytes, json_routes)
    gate.batcher = batcher  # for tests and embedding programs
    return gate
