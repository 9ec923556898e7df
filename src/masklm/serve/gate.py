"""The ASGI layer in front of the routes: API key, body-size bound, request metrics, JSON routes.

A pure ASGI middleware (no per-request task or stream copies): it checks ``Authorization: Bearer KEY``
in constant time on every route but ``/health`` and the playground page's files (``masklm.serve.page``),
refuses bodies over ``max_body_bytes`` with 413 before they are parsed, and records each request's route,
status and latency.

It also serves the JSON POST routes itself: the body is validated with the route's pydantic model
(pydantic's own JSON parser) and handed to the route's function, whose response is sent as is. FastAPI's
routing, dependency solving and middleware stack cost more per request than a small model call, so
only the other routes (GETs, ``/docs``, 404 and 405) go through FastAPI.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from masklm.serve.limits import ServeError
from masklm.serve.metrics import Metrics
from masklm.serve.page import PAGE_PATHS
from masklm.serve.responses import as_serve_error, error_response, parse_body

OPEN_PATHS = frozenset({"/health", *PAGE_PATHS})  # the page files hold no model data


class Gate:
    """API key, body limit and metrics around an ASGI app."""

    def __init__(self, app: Any, metrics: Metrics, routes: set[str], api_key: str | None,
                 max_body_bytes: int, json_routes: dict[str, tuple[Any, Any]]) -> None:
        self.app = app
        self.json_routes = json_routes     # path -> (body model, async route function)
        self.metrics = metrics
        self.routes = routes
        self.key = api_key.encode() if api_key else None
        self.max_body = max_body_bytes

    def route(self, path: str) -> str:
        """The metrics label: a known path, or ``other`` (bounded label cardinality)."""
        return path if path in self.routes else "other"

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        for name, value in headers:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
        return False

    async def _refuse(self, send: Any, route: str, exc: ServeError) -> None:
        self.metrics.error(route, exc.error_type)
        await _send(send, error_response(exc))

    async def _serve_json(self, scope: dict, body: bytes, send: Any, route: str) -> None:
        model, endpoint = self.json_routes[scope["path"]]
        try:
            response = await endpoint(parse_body(model, body, _header(scope["headers"], b"content-type")))
        except Exception as exc:  # noqa: BLE001 - every failure is answered; bugs are logged by as_serve_error
            return await self._refuse(send, route, as_serve_error(exc, scope["method"], scope["path"]))
        await _send(send, response)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        route = self.route(scope["path"])
        status = [500]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self.key is not None and scope["path"] not in OPEN_PATHS and not self._authorized(scope["headers"]):
                return await self._refuse(send_status, route, ServeError(
                    "missing or wrong API key; send the header 'Authorization: Bearer KEY'", "unauthorized",
                    headers={"WWW-Authenticate": "Bearer"}))
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body, too_big = await self._read_body(receive, scope["headers"])
                if too_big:
                    return await self._refuse(send_status, route, ServeError(
                        f"request body is larger than this server's limit of {self.max_body} bytes; "
                        "send fewer or shorter inputs", "too_large"))
                if scope["method"] == "POST" and scope["path"] in self.json_routes:
                    return await self._serve_json(scope, body, send_status, route)
                receive = _replay(body, receive)
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.request(route, status[0], time.perf_counter() - start)

    async def _read_body(self, receive: Any, headers: list[tuple[bytes, bytes]]) -> tuple[bytes, bool]:
        for name, value in headers:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                return b"", True
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return b"", True
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks), False


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


async def _send(send: Any, response: Any) -> None:
    """A complete (non-streaming) Starlette response, sent without its ASGI wrapper."""
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def _replay(body: bytes, receive_more: Any) -> Any:
    """A ``receive`` that gives the buffered body once, then waits on the connection (disconnects)."""
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive_more()

    return receive
