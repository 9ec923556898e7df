"""``masklm serve``: serve a model folder over HTTP (needs the ``serve`` extra: fastapi, uvicorn)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys

from masklm.cli.model_flags import add_model_flags, load_pipeline
from masklm.errors import ConfigError
from masklm.serve.limits import Limits

LOOPBACK = ("localhost",)


def register(sub: argparse._SubParsersAction) -> None:
    d = Limits()
    p = sub.add_parser("serve", help="HTTP server: fill-mask, score, generate, embed, tokenize",
                       description="Serve a model folder over HTTP (FastAPI + uvicorn; pip install "
                                   "'masklm[serve]'). API docs at /docs. Binds 127.0.0.1 unless --host says "
                                   "otherwise.")
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--api-key", default=os.environ.get("MASKLM_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every route but /health and the page at / "
                        "(default: $MASKLM_API_KEY; prefer the variable, arguments show in ps)")
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    add_model_flags(p)
    g = p.add_argument_group("limits")
    g.add_argument("--max-inputs", type=int, default=d.max_inputs, help=f"texts per request (default {d.max_inputs})")
    g.add_argument("--max-tokens", type=int, default=d.max_tokens,
                   help=f"tokens per input, capped at the model's maximum (default {d.max_tokens})")
    g.add_argument("--max-batch-tokens", type=int, default=d.max_batch_tokens,
                   help=f"padded tokens per model call across requests (default {d.max_batch_tokens})")
    g.add_argument("--max-queue", type=int, default=d.max_queue,
                   help=f"requests admitted before answering 429 (default {d.max_queue})")
    g.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms,
                   help=f"how long to wait for more requests to batch (default {d.batch_wait_ms})")
    g.add_argument("--max-top-k", type=int, default=d.max_top_k, help=f"default {d.max_top_k}")
    g.add_argument("--max-targets", type=int, default=d.max_targets, help=f"default {d.max_targets}")
    g.add_argument("--max-generate-length", type=int, default=d.max_generate_length,
                   help=f"default {d.max_generate_length}")
    g.add_argument("--max-generate-steps", type=int, default=d.max_generate_steps,
                   help=f"default {d.max_generate_steps}")
    g.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help=f"default {d.max_body_bytes}")
    g.add_argument("--max-fill-mask-cost", type=int, default=d.max_fill_mask_cost,
                   help=f"fill-mask work per request: tokens x masks x top_k summed over its inputs "
                        f"(default {d.max_fill_mask_cost}); past it, 413")
    g.add_argument("--max-generate-cost", type=int, default=d.max_generate_cost,
                   help=f"generate work per request: length x steps x length_beam (default {d.max_generate_cost}); "
                        "past it, 413")
    g = p.add_argument_group("timeouts (seconds)")
    g.add_argument("--request-timeout", type=float, default=d.request_timeout,
                   help=f"answer 504 and drop the work of a request not answered within this time, queueing "
                        f"included (default {d.request_timeout:g})")
    g.add_argument("--read-timeout", type=float, default=d.read_timeout,
                   help=f"close a connection that has not sent a whole request (headers and body) within this "
                        f"time (default {d.read_timeout:g})")
    g.add_argument("--keep-alive-timeout", type=float, default=d.keep_alive_timeout,
                   help=f"close a connection idle this long after an answer (default {d.keep_alive_timeout:g})")
    p.add_argument("--access-log", action="store_true", help="log every request to stderr")
    p.set_defaults(func=run)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in LOOPBACK


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket, so a taken port is a one-line error and ``--port 0`` reports its port."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
                          "choose another --port or --host") from exc
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace) -> int:
    try:  # lazy: fastapi and uvicorn are the optional 'serve' extra
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        print("masklm: error: 'masklm serve' needs FastAPI and uvicorn; pip install 'masklm[serve]'",
              file=sys.stderr)
        return 2
    # lazy: the app (which needs fastapi) loads only when this command runs
    from masklm.serve.app import create_app
    from masklm.serve.connections import timed_protocol

    limits = Limits(max_inputs=args.max_inputs, max_tokens=args.max_tokens, max_batch_tokens=args.max_batch_tokens,
                    max_queue=args.max_queue, batch_wait_ms=args.batch_wait_ms, max_top_k=args.max_top_k,
                    max_targets=args.max_targets, max_generate_length=args.max_generate_length,
                    max_generate_steps=args.max_generate_steps, max_body_bytes=args.max_body_bytes,
                    max_fill_mask_cost=args.max_fill_mask_cost, max_generate_cost=args.max_generate_cost,
                    request_timeout=args.request_timeout, read_timeout=args.read_timeout,
                    keep_alive_timeout=args.keep_alive_timeout)
    if args.api_key is not None and not args.api_key.strip():
        raise ConfigError("--api-key is empty; pass a key or leave the flag out")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {args.port}")
    pipe = load_pipeline(args)
    try:
        app = create_app(pipe, limits, api_key=args.api_key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    sock = _bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    if not _is_loopback(args.host) and not args.api_key:
        print(f"masklm: warning: listening on {args.host} without --api-key; anyone who can reach this "
              "address can use the model", file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    print(f"masklm: serving {args.model} on http://{shown}:{port} (playground at /, API docs at /docs)",
          file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=args.access_log, timeout_graceful_shutdown=5,
                            http=timed_protocol(limits.read_timeout), timeout_keep_alive=limits.keep_alive_timeout)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
