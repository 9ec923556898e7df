"""``masklm serve``: an HTTP server for a model folder (FastAPI + uvicorn, the ``serve`` extra).

Routes: ``GET /`` (the playground page), ``/health``, ``/info``, ``/metrics``, ``/docs``; ``POST /fill-mask``, ``/score``,
``/generate``, ``/embed``, ``/v1/embeddings``, ``/tokenize``. Requests that arrive together are batched
by a token budget in a worker thread; every request is bounded; overload answers 429.
Import ``masklm.serve.app.create_app`` for the ASGI app (it needs fastapi).
"""

from masklm.serve.limits import Limits, ServeError

__all__ = ["Limits", "ServeError"]
