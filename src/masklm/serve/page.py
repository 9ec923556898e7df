"""The playground page: ``GET /`` serves one static HTML page with its script and style sheet.

The files live in ``masklm/serve/static`` (shipped as package data): plain HTML, CSS and JavaScript, no
build step, no external fonts or scripts, so the page works offline. The page calls the server's own
JSON routes with relative URLs, sending the API key (kept in the browser's session storage) as the
bearer header, so every limit of the server applies to it as to any client.

The three page files are open without the key: a browser cannot send a bearer header when it navigates
to a page, and the files hold no model data. Every answer carries a Content-Security-Policy that lets
the page load scripts, styles and data only from this server and run no inline script, so even a text
the page wrongly inserted as HTML could not run or send anything elsewhere (the script itself inserts
every text with ``textContent``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from starlette.responses import Response

STATIC = Path(__file__).parent / "static"
FILES = {  # route -> (file in STATIC, media type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/playground.js": ("playground.js", "text/javascript; charset=utf-8"),
    "/playground.css": ("playground.css", "text/css; charset=utf-8"),
}
PAGE_PATHS = frozenset(FILES)
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # a new masklm version's page replaces the old one at once
}


def add_page(app) -> None:
    """Register ``GET`` routes for the page files on the FastAPI ``app`` (left out of /openapi.json)."""
    for path, (name, media_type) in FILES.items():
        app.add_api_route(path, _serve((STATIC / name).read_bytes(), media_type), methods=["GET"],
                          include_in_schema=False)


def _serve(body: bytes, media_type: str) -> Callable[[], Awaitable[Response]]:
    async def endpoint() -> Response:
        return Response(body, media_type=media_type, headers=HEADERS)
    return endpoint
