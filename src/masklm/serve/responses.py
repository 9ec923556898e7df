"""JSON answers: the body encoder, request-body parsing, and every failure as a ``ServeError``.

The gate serves the JSON routes with these, and the FastAPI exception handlers use the same mapping,
so an error reads the same wherever it is caught: ``{"error": message, "error_type": kind}``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from masklm.errors import MaskLMError
from masklm.serve.limits import ServeError

try:
    import orjson

    def dumps(content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
except ImportError:  # orjson is in the serve extra; without it, the standard library (numpy arrays as lists)
    def dumps(content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, default=lambda o: o.tolist()).encode()


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(content), status_code=status, headers=headers, media_type="application/json")


def error_response(exc: ServeError) -> Response:
    return json_response(exc.body(), exc.status, exc.headers)


def validation_message(errors: list[dict[str, Any]]) -> str:
    """One line naming each bad field: ``parameters.foo: unknown field``."""
    parts: list[str] = []
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        where = ".".join(loc) or "body"
        if err.get("type") == "json_invalid":
            msg = f"request body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})"
        elif err.get("type") == "extra_forbidden":
            msg = f"{where}: unknown field; see /docs for the accepted fields"
        elif err.get("type") == "missing" and where == "body":
            msg = "request body is missing; send a JSON object"
        else:
            msg = f"{where}: {err.get('msg')}"
        if msg not in parts:
            parts.append(msg)
    return "; ".join(parts[:4]) or "invalid request"


def is_json_type(content_type: str | None) -> bool:
    """``application/json``, alone or with ``charset=utf-8`` (any case and spacing), and nothing else."""
    if content_type is None:
        return False
    mime, _, params = content_type.partition(";")
    params = "".join(params.split()).lower().replace('"', "")
    return mime.strip().lower() == "application/json" and params in ("", "charset=utf-8")


def parse_body(model: type[BaseModel], body: bytes, content_type: str | None) -> BaseModel:
    """``body`` validated as ``model`` (pydantic's JSON parser); 415 unless sent as JSON, 422 naming what
    is wrong otherwise."""
    if not is_json_type(content_type):
        # Strict on purpose: a browser page can send text/plain (even 'text/plain; charset=json') or no type
        # cross-site without a preflight, never application/json. Only UTF-8 is read, so only it is accepted.
        got = repr(content_type) if content_type is not None else "no Content-Type"
        raise ServeError(f"the body must be JSON sent with 'Content-Type: application/json' (got {got}); "
                         "no other type or charset is accepted", "unsupported_media_type")
    if not body.strip():
        raise ServeError("request body is missing; send a JSON object")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise ServeError(validation_message(exc.errors())) from None


def as_serve_error(exc: BaseException, method: str, path: str) -> ServeError:
    """What the client is told about ``exc``; anything unexpected is logged and answered 500."""
    if isinstance(exc, ServeError):
        return exc
    if isinstance(exc, MaskLMError):
        return ServeError(str(exc))
    if isinstance(exc, RequestValidationError):
        return ServeError(validation_message(exc.errors()))
    if isinstance(exc, HTTPException):
        if exc.status_code in (404, 405):
            return ServeError(f"no route {method} {path}; see /docs",
                              "not_found" if exc.status_code == 404 else "method_not_allowed")
        return ServeError(str(exc.detail))
    print(f"masklm serve: internal error on {path}: {exc!r}", file=sys.stderr)
    return ServeError("internal server error; the server logged it", "internal")
