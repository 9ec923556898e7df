"""The FastAPI application: routes, validation and error bodies.

``create_app(pipe, limits, api_key)`` builds it around a loaded ``Pipeline``; ``masklm serve`` runs it
under uvicorn. The POST routes each take one JSON body model: FastAPI documents them (``/docs``,
``/openapi.json``) and the gate in front serves them, validating the body with the same pydantic model
without FastAPI's per-request machinery (see ``masklm.serve.gate``). Handlers check the request's
fields on the event loop, then hand the model work, tokenization included, to the ``Batcher``'s worker
thread. Every error is ``{"error", "error_type"}`` (see ``masklm.serve.responses``).
No request field names a file, a module or a command: requests carry only text and numbers.
``GET /`` is the playground page (``masklm.serve.page``); ``/generate`` with ``return_steps`` adds the
canvas after every network call, which the page animates (``masklm.serve.steps``).
"""

from __future__ import annotations

import base64
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
from masklm.serve.batching import Batcher, Job, Runner
from masklm.serve.gate import Gate
from masklm.serve.generation import check_generate, generate_params
from masklm.serve.limits import Limits, ServeError, as_list, check_count, check_range
from masklm.serve.metrics import Metrics
from masklm.serve.page import add_page
from masklm.serve.responses import as_serve_error, error_response, json_response
from masklm.serve.schemas import (
    EmbedRequest,
    FillMaskRequest,
    GenerateRequest,
    OpenAIEmbeddingRequest,
    ScoreRequest,
    TokenizeRequest,
)
from masklm.version import __version__

JsonRoute = tuple[type[BaseModel], Callable[[Any], Awaitable[Response]]]


def read_info(pipe, limits: Limits) -> dict[str, Any]:
    """What ``GET /info`` reports: the model, its training objectives, the server's limits."""
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
        "model_masklm_version": getattr(cfg, "masklm_version", None),
        "masklm_version": __version__,
        "generate": hasattr(pipe, "generate"),
        "strategies": list(STRATEGIES),
        "limits": limits.as_dict(),
    }


def create_app(pipe, limits: Limits | None = None, api_key: str | None = None) -> Any:
    """The ASGI app serving ``pipe``: FastAPI routes wrapped in the key/body-limit/metrics gate."""
    limits = (limits or Limits()).check(pipe.max_length)
    metrics = Metrics()
    batcher = Batcher(Runner(pipe, limits, metrics), limits, metrics)
    info = read_info(pipe, limits)
    tok = pipe.tokenizer
    gen_params = generate_params(pipe)

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

    json_routes: dict[str, JsonRoute] = {}

    def json_post(path: str, summary: str) -> Callable:
        """A POST route taking one JSON body model: served by the gate, documented by FastAPI."""
        def register(endpoint: Callable[[Any], Awaitable[Response]]) -> Callable:
            json_routes[path] = (get_type_hints(endpoint)["body"], endpoint)
            return app.post(path, summary=summary)(endpoint)
        return register

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

    @json_post("/fill-mask", summary="top-k tokens at each mask (Hugging Face fill-mask schema)")
    async def fill_mask(body: FillMaskRequest) -> Response:
        texts = as_list(body.inputs)
        check_count(texts, limits)
        p = body.parameters
        check_range("parameters.top_k", p.top_k, 1, limits.max_top_k)
        targets = None
        if p.targets is not None:
            targets = as_list(p.targets, "parameters.targets")
            if len(targets) > limits.max_targets:
                raise ServeError(f"parameters.targets has {len(targets)} words, more than this server's "
                                 f"limit of {limits.max_targets}", "too_large")
            if not all(t.strip() for t in targets):
                raise ServeError("parameters.targets holds an empty word; pass words the tokenizer knows")
        job = Job("fill_mask", (tuple(targets) if targets else None,), texts, {"top_k": p.top_k, "targets": targets})
        return json_response(await batcher.submit(job))

    @json_post("/score", summary="sentence log-probabilities: pll, pll-word-l2r, causal or mntp")
    async def score(body: ScoreRequest) -> Response:
        texts = as_list(body.inputs)
        check_count(texts, limits)
        p = body.parameters.model_dump()
        job = Job("score", (p["metric"], p["reduction"], p["per_token"]), texts, p)
        out = []
        for r in await batcher.submit(job):
            if isinstance(r, dict):
                out.append({"score": r["score"],
                            "tokens": [{"token": t, "logprob": lp} for t, lp in r["tokens"]]})
            else:
                out.append({"score": r})
        return json_response(out)

    async def _embed(texts: list[str], pooling: str, normalize: bool) -> tuple[Any, int]:
        check_count(texts, limits)
        job = Job("embed", (pooling, normalize), texts, {"pooling": pooling, "normalize": normalize})
        return await batcher.submit(job), sum(map(len, job.ids))

    @json_post("/embed", summary="sentence embeddings, [[float]] (text-embeddings-inference schema)")
    async def embed(body: EmbedRequest) -> Response:
        vectors, _ = await _embed(as_list(body.inputs), body.pooling, body.normalize)
        return json_response(vectors)

    @json_post("/v1/embeddings", summary="OpenAI-compatible embeddings")
    async def openai_embeddings(body: OpenAIEmbeddingRequest) -> Response:
        if body.dimensions is not None and body.dimensions != pipe.config.hidden_size:
            raise ServeError(f"dimensions={body.dimensions}: this model's embeddings have "
                             f"{pipe.config.hidden_size} dimensions; leave dimensions out")
        vectors, n_tokens = await _embed(as_list(body.input, "input"), "mean", True)
        data = []
        for i, vec in enumerate(vectors):
            emb = (base64.b64encode(vec.astype("<f4").tobytes()).decode() if body.encoding_format == "base64"
                   else vec)
            data.append({"object": "embedding", "embedding": emb, "index": i})
        return json_response({"object": "list", "data": data, "model": body.model or info["model_id"],
                              "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}})

    @json_post("/tokenize", summary="tokens with ids, text, special flag and character offsets")
    async def tokenize(body: TokenizeRequest) -> Response:
        texts = as_list(body.inputs)
        check_count(texts, limits)
        out = []
        for i, enc in enumerate(tok.encode_batch(texts, add_special_tokens=body.add_special_tokens)):
            if len(enc.ids) > limits.max_tokens:
                raise ServeError(f"inputs[{i}] is {len(enc.ids)} tokens long, more than this server's limit "
                                 f"of {limits.max_tokens}", "too_large")
            out.append([{"id": t, "text": s, "special": bool(sp), "start": a, "stop": b}
                        for t, s, sp, (a, b) in zip(enc.ids, enc.tokens, enc.special_tokens_mask, enc.offsets)])
        return json_response(out)

    @json_post("/generate", summary="iterative unmasking (Pipeline.generate); same prompt and seed, same text")
    async def generate(body: GenerateRequest) -> Response:
        if gen_params is None:
            raise ServeError("this masklm version has no Pipeline.generate; /generate is not available",
                             "not_implemented")
        params = check_generate(body.prompt, body.parameters, gen_params, limits, tok)
        kind = "generate_steps" if body.return_steps else "generate"
        result = await batcher.submit(Job(kind, (), [body.prompt or ""], params))
        if isinstance(result, str):
            return json_response({"generated_text": result})
        if isinstance(result, (list, tuple)) and all(isinstance(r, str) for r in result):
            return json_response([{"generated_text": r} for r in result])
        return json_response(result)

    routes = {r.path for r in app.routes}
    gate = Gate(app, metrics, routes, api_key, limits.max_body_bytes, json_routes)
    gate.batcher = batcher  # for tests and embedding programs
    return gate
