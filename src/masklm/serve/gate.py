"""The ASGI layer in front of the routes: API key, body-size bound, request metrics, JSON routes.

A pure ASGI middleware (no per-request task or stream copies): it checks ``Authorization: Bearer KEY``
in constant time on every route but ``/health``, the playground page's files (``masklm.serve.page``) and
the API docs (``/docs``, ``/openapi.json``: a browser cannot send the header),
refuses bodies over ``max_body_bytes`` with 413 before they are parsed, and records each request's route,
status and latency.

It also serves the JSON POST routes itself: the body is validated with the route's pydantic model
(pydantic's own JSON parser) and handed to the route's function, whose response is sent as is. FastAPI's
routing, dependency solving and middleware stack cost more per request than a small model call, so
only the other routes (GETs, ``/docs``, 404 and 405) go through FastAPI.

While a route's function runs, the gate listens on the connection: if the client disconnects first, the
function is cancelled, which drops its queued or running job (``masklm.serve.batching``), and nothing is
answered. A client that disconnects while sending its body gets no work done at all. ``HEAD`` on a GET
route is served as that GET (uvicorn sends the headers without the body).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from typing import Any

from masklm.serve.limits import ServeError
from masklm.serve.metrics import Metrics
from masklm.serve.page import PAGE_PATHS
from masklm.serve.responses import as_serve_error, error_response, parse_body

# the page files and the API's own description hold no model data, and a browser sends no key header
OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/openapi.json", *PAGE_PATHS})
CLIENT_GONE = 499  # the metrics' status for a request whose client left before its answer (nginx's code)


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

    async def _serve_json(self, scope: dict, body: bytes, receive: Any, send: Any, route: str) -> bool:
        """Validate, run and answer a JSON route; False when the client left first (nothing answered)."""
        model, endpoint = self.json_routes[scope["path"]]
        try:
            request = parse_body(model, body, _header(scope["headers"], b"content-type"))
        except Exception as exc:  # noqa: BLE001 - every failure is answered; bugs are logged by as_serve_error
            await self._refuse(send, route, as_serve_error(exc, scope["method"], scope["path"]))
            return True
        work = asyncio.ensure_future(endpoint(request))
        gone = asyncio.ensure_future(_disconnect(receive))
        try:
            await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:  # the client left (or the server is stopping): cancelling the work drops its job
            for task in (work, gone):
                task.cancel()
        if not work.done() or work.cancelled():
            with contextlib.suppress(asyncio.CancelledError):
                await work
            return False
        try:
            response = work.result()
        except Exception as exc:  # noqa: BLE001 - as above
            await self._refuse(send, route, as_serve_error(exc, scope["method"], scope["path"]))
            return True
        await _send(send, response)
        return True

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
                if body is None:  # the client left before sending its whole body: nothing to answer
                    status[0] = CLIENT_GONE
                    return None
                if scope["method"] == "POST" and scope["path"] in self.json_routes:
                    if not await self._serve_json(scope, body, receive, send_status, route):
                        status[0] = CLIENT_GONE
                    return None
                receive = _replay(body, receive)
            elif scope["method"] == "HEAD" and scope["path"] in self.routes and scope["path"] not in self.json_routes:
                scope = {**scope, "method": "GET"}  # uvicorn still knows it as HEAD and sends no body
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.request(route, status[0], time.perf_counter() - start)

    async def _read_body(self, receive: Any, headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, bool]:
        """(body, too big); body None when the client disconnected before sending all of it."""
        for name, value in headers:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                return b"", True
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, False
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return b"", True
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks), False


async def _disconnect(receive: Any) -> None:
    """Returns when the client disconnects (the body was read already, so nothing else arrives)."""
    while (await receive())["type"] != "http.disconnect":
        pass


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
