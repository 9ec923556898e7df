"""Connections that cannot be held open: a read deadline on every request, on top of uvicorn.

uvicorn closes a connection left idle ``timeout_keep_alive`` seconds after an answer, but has no limit on
how long a client may take to send a request: a client that opens a connection and sends nothing, half
a header, or part of its body, holds a socket (and a file descriptor) forever (the fuzz pass left 300
such connections open for 70 s, none closed). ``timed_protocol(read_timeout)`` is uvicorn's own HTTP
protocol class (httptools when installed, else h11) with one addition: from the moment a connection opens,
or the first byte of a new request arrives on a kept-alive one, the whole request (headers and body)
must arrive within ``read_timeout`` seconds, or the connection is closed. The model work a request then
asks for is bounded separately (``--request-timeout``, ``masklm.serve.batching``).

The protocol learns that a request's headers are complete when uvicorn calls the application for it,
and that its body is complete from the request cycle's ``more_body`` flag, which both of uvicorn's HTTP
implementations keep.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol


def timed_protocol(read_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class, closing a connection that takes over ``read_timeout`` seconds to send
    a whole request (pass it as ``uvicorn.Config(http=...)``)."""

    class TimedHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._read_timer: asyncio.TimerHandle | None = None
            self._in_request = False     # the headers of the current request have arrived
            app = self.app

            async def started(scope: dict, receive: Any, send: Any) -> None:
                self._in_request = True
                await app(scope, receive, send)

            self.app = started

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if not self._in_request and self._read_timer is None:  # the first bytes of a new request
                self._arm()
            super().data_received(data)

        def on_response_complete(self) -> None:
            self._in_request = False
            self._disarm()
            super().on_response_complete()  # arms uvicorn's keep-alive timeout

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._read_timer = self.loop.call_later(read_timeout, self._read_deadline)

        def _disarm(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

        def _read_deadline(self) -> None:
            self._read_timer = None
            cycle = self.cycle
            body_pending = cycle is not None and cycle.more_body and not cycle.response_complete
            if (not self._in_request or body_pending) and not self.transport.is_closing():
                self.transport.close()  # the app sees http.disconnect and drops the request

    return TimedHTTPProtocol
