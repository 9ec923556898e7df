"""A server that cannot be tied up (#12 point 4), against real ``masklm serve`` processes.

Cost bounds checked before any model work (413 naming the flag), 4xx for every wrong type or number,
strict content type (415), ``HEAD`` on GET routes, connections that stall closed after ``--read-timeout``
(raw sockets that send nothing, half a header or half a body) and idle ones after
``--keep-alive-timeout``; abandoned expensive requests dropped (a flood of clients that send and
disconnect, then a fresh request answered); a request past ``--request-timeout`` answered 504 and its
running generation stopped at its next network call.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import time
from pathlib import Path

import pytest
import torch
from test_serve import Server, model_dir  # noqa: F401  (model_dir: the tiny model fixture)

httpx = pytest.importorskip("httpx")

GOOD = {"inputs": "the cat [MASK] on the mat", "parameters": {"top_k": 3}}
LONG_GENERATION = {"prompt": "the cat", "parameters": {"length": 256, "steps": 256}}


@pytest.fixture(scope="module")
def tight(model_dir, tmp_path_factory):  # noqa: F811
    server = Server(model_dir, tmp_path_factory.mktemp("limits") / "tight.log",
                    "--max-fill-mask-cost", "200", "--max-generate-cost", "100", "--max-generate-length", "16",
                    "--max-generate-steps", "16", "--read-timeout", "1", "--keep-alive-timeout", "1")
    try:
        yield server.wait()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def long_model(tmp_path_factory) -> Path:
    """A model whose 256-token generations take many network calls over 258-token canvases."""
    from masklm.config import ModelConfig
    from masklm.modeldir import save_model_dir
    from masklm.models import build_model
    from masklm.tokenizer import train_tokenizer

    rng = random.Random(0)
    words = "the a cat dog sat ran on mat".split()
    tok = train_tokenizer([" ".join(rng.choice(words) for _ in range(12)) for _ in range(50)],
                          kind="wordpiece", vocab_size=60, min_frequency=1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="bert", vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=128, max_position_embeddings=300))
    return save_model_dir(tmp_path_factory.mktemp("long") / "model", model, tok, training_args={"objectives": ["mlm"]})


def post(url: str, path: str, body, **kw) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=60, **kw)


def metric(url: str, name: str) -> float:
    """The value of one metric line (``name`` with its labels) in /metrics, 0 when absent."""
    m = re.search(rf"^{re.escape(name)} (\S+)$", httpx.get(url + "/metrics", timeout=60).text, re.M)
    return float(m.group(1)) if m else 0.0


def test_fill_mask_cost_is_bounded_before_any_work(tight):
    # [CLS] the [MASK] [MASK] sat [SEP]: 6 tokens x 2 masks x top_k
    body = {"inputs": "the [MASK] [MASK] sat", "parameters": {"top_k": 16}}
    assert post(tight.url, "/fill-mask", body).status_code == 200              # 192 <= 200
    calls = metric(tight.url, "masklm_batch_requests_count")
    body["parameters"]["top_k"] = 17                                           # 204 > 200
    r = post(tight.url, "/fill-mask", body)
    assert r.status_code == 413 and r.json()["error_type"] == "too_large", r.text
    message = r.json()["error"]
    assert "204" in message and "tokens x masks x top_k" in message and "--max-fill-mask-cost" in message
    assert "\n" not in message
    assert metric(tight.url, "masklm_batch_requests_count") == calls           # no model call was made
    assert post(tight.url, "/fill-mask", GOOD).status_code == 200


def test_generate_cost_is_bounded(tight):
    ok = post(tight.url, "/generate", {"prompt": "the cat", "parameters": {"length": 10, "steps": 10}})
    assert ok.status_code == 200, ok.text                                      # 10 x 10 x 1 = 100
    for params, cost in (({"length": 11, "steps": 10}, "110"), ({"length": 10, "steps": 5, "length_beam": 3}, "150")):
        r = post(tight.url, "/generate", {"prompt": "the cat", "parameters": params})
        assert r.status_code == 413, (params, r.text)
        assert cost in r.json()["error"] and "--max-generate-cost" in r.json()["error"]
    # the default strategy's calls count too: speculative decoding (the model was trained with mlm and clm)
    # may take a call per token, so length x length
    assert post(tight.url, "/generate", {"prompt": "the", "parameters": {"length": 11}}).status_code == 413


WRONG = [  # /generate parameters of the wrong type or out of range: each a 422 naming the field
    ({"temperature": "abc"}, "temperature"), ({"top_k": "x"}, "top_k"), ({"top_p": "x"}, "top_p"),
    ({"seed": 2**70}, "seed"), ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"seed": True}, "seed"),
    ({"choice_temperature": "x"}, "choice_temperature"), ({"choice_temperature": -5}, "choice_temperature"),
    ({"stop_at_sep": "yes"}, "stop_at_sep"), ({"length": 2.0}, "length"), ({"top_p": 1.5}, "top_p"),
    ({"temperature": -1}, "temperature"), ({"length_beam": 0}, "length_beam"), ({"strategy": 5}, "strategy"),
]


@pytest.mark.parametrize("params, field", WRONG, ids=[f"{k}" for k, _ in WRONG])
def test_wrong_generate_parameters_are_4xx(tight, params, field):
    r = post(tight.url, "/generate", {"prompt": "the cat", "parameters": params})
    assert r.status_code == 422, r.text
    assert set(r.json()) == {"error", "error_type"} and field in r.json()["error"]


def test_non_finite_numbers_are_4xx(tight):
    for raw in (b'{"prompt": "a", "parameters": {"temperature": 1e309}}',
                b'{"prompt": "a", "parameters": {"top_p": NaN}}',
                b'{"inputs": "a [MASK]", "parameters": {"top_k": 1e309}}'):
        path = "/fill-mask" if b"inputs" in raw else "/generate"
        r = httpx.post(tight.url + path, content=raw, headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code == 422 and set(r.json()) == {"error", "error_type"}, (raw, r.text)
    assert post(tight.url, "/generate", {"prompt": "the", "parameters": {"seed": 2**63 - 1, "length": 4}}).status_code == 200


@pytest.mark.parametrize("content_type, status", [
    ("text/plain; charset=json", 415), (None, 415), ("text/plain", 415), ("application/jsonx", 415),
    ("application/json; charset=latin-1", 415), ("application/x-www-form-urlencoded", 415),
    ("application/json", 200), ("Application/JSON; Charset=UTF-8", 200), ("application/json;charset=utf-8", 200),
])
def test_content_type_is_strict(tight, content_type, status):
    headers = {"content-type": content_type} if content_type else {}
    r = httpx.post(tight.url + "/fill-mask", content=json.dumps(GOOD).encode(), headers=headers, timeout=60)
    assert r.status_code == status, r.text
    if status == 415:
        assert r.json()["error_type"] == "unsupported_media_type" and "application/json" in r.json()["error"]


def test_head_on_get_routes(tight):
    for path in ("/health", "/info", "/metrics", "/", "/playground.js", "/openapi.json", "/docs"):
        get, head = httpx.get(tight.url + path, timeout=60), httpx.head(tight.url + path, timeout=60)
        assert head.status_code == 200 == get.status_code, path
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"], path
    assert httpx.head(tight.url + "/fill-mask", timeout=60).status_code == 405
    assert httpx.head(tight.url + "/nowhere", timeout=60).status_code == 404


def _closed_by_server(sock: socket.socket) -> bool:
    """True when the server closes the connection (EOF or reset) before the 30 s socket timeout."""
    sock.settimeout(30)
    try:
        while sock.recv(65536):
            pass  # an answer (e.g. 400) may come first; the close is what counts
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    finally:
        sock.close()


@pytest.mark.parametrize("sent", [
    b"",                                                                    # connects, says nothing
    b"POST /fill-mask HTTP/1.1\r\nHost: x\r\nContent-Le",                 # half a header
    b"POST /fill-mask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"in",
], ids=["nothing", "half-header", "half-body"])
def test_stalled_connections_are_closed(tight, sent):
    host, port = tight.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(sent)
    assert _closed_by_server(sock)
    assert post(tight.url, "/fill-mask", GOOD).status_code == 200  # others are still served


def test_idle_keep_alive_connection_is_closed(tight):
    host, port = tight.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
        answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200") and b'{"status":"ok"}' in answer
    assert _closed_by_server(sock)  # after --keep-alive-timeout, with no second request


def test_abandoned_requests_are_dropped_and_a_fresh_one_is_answered(long_model, tmp_path):
    """30 clients each send a long generation (256 network calls) and disconnect at once. None of that work
    is done: each request is recorded as gone (status 499), any generation that had started is stopped at
    its next network call, and a fresh request is answered (were the work done, it would wait behind all
    30 generations)."""
    server = Server(long_model, tmp_path / "flood.log").wait()
    try:
        host, port = server.url.removeprefix("http://").split(":")
        body = json.dumps(LONG_GENERATION).encode()
        request = (b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        n = 30
        for _ in range(n):
            with socket.create_connection((host, int(port)), timeout=30) as sock:
                sock.sendall(request)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and metric(server.url, 'masklm_requests_total{route="/generate",status="499"}') < n:
            time.sleep(0.2)
        assert metric(server.url, 'masklm_requests_total{route="/generate",status="499"}') == n
        started = metric(server.url, "masklm_batch_requests_count")
        stopped = metric(server.url, "masklm_model_calls_stopped_total")
        assert started - stopped <= 1, (started, stopped)  # at most one ran to its end
        assert metric(server.url, 'masklm_jobs_dropped_total{reason="disconnected"}') >= stopped
        t = time.monotonic()
        fresh = post(server.url, "/fill-mask", {"inputs": "the [MASK] sat", "parameters": {"top_k": 2}})
        print(f"fresh request answered in {time.monotonic() - t:.3f} s")  # reported, not asserted
        assert fresh.status_code == 200 and len(fresh.json()) == 2
        assert metric(server.url, "masklm_queue_depth") == 0
    finally:
        server.stop()


class _SlowModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Identity()


class _SlowPipe:
    """A pipeline whose generation makes up to 1,000 network calls of 10 ms each, counting them."""

    def __init__(self) -> None:
        self.model = _SlowModel()
        self.tokenizer = None  # generate jobs are not tokenized by the worker
        self.calls = 0

    def generate(self, **params) -> dict:
        for _ in range(1000):
            self.model.layer(torch.zeros(1))
            self.calls += 1
            time.sleep(0.01)
        return {"text": "done"}


def test_past_the_deadline_504_and_the_running_generation_stops():
    from masklm.serve.batching import Batcher, Job, Runner
    from masklm.serve.limits import Limits, ServeError
    from masklm.serve.metrics import Metrics

    pipe, metrics = _SlowPipe(), Metrics()
    limits = Limits(request_timeout=2.0, batch_wait_ms=0)  # the worker starts the job well before that
    batcher = Batcher(Runner(pipe, limits, metrics), limits, metrics)

    async def go():
        batcher.start()
        try:
            with pytest.raises(ServeError) as err:
                await batcher.submit(Job("generate", (), [""], {}))
            return err.value
        finally:
            await asyncio.sleep(0.5)  # let the worker reach its next network call
            batcher.stop()
    err = asyncio.run(go())
    assert err.status == 504 and err.error_type == "timeout" and "--request-timeout" in err.message
    for _ in range(100):  # the worker thread ends its call at the next network call
        if metrics.stopped_calls:
            break
        time.sleep(0.05)
    assert metrics.stopped_calls == 1 and metrics.dropped_jobs["deadline"] == 1
    assert 0 < pipe.calls < 1000   # stopped midway, not run to its end
    calls = pipe.calls
    time.sleep(0.2)
    assert pipe.calls == calls


def test_merged_fill_mask_calls_stay_within_the_cost_bound():
    from masklm.serve.batching import Job, Runner
    from masklm.serve.limits import Limits

    runner = Runner(pipe=None, limits=Limits(max_fill_mask_cost=1000), metrics=None)
    jobs = [Job("fill_mask", (None,), [f"x{i}"], {"top_k": k}, ids=[[1] * 5]) for i, k in enumerate((1, 1, 100, 1, 1))]
    for job, units in zip(jobs, (400, 400, 5, 500, 400)):
        job.units = units
    batches = [[jobs.index(j) for j in b] for b in runner._batches(jobs)]
    # [0, 1]: 800 x 1; adding job 2 would decode 805 x 100; [2]: 5 x 100 = 500, then + 500 units x 100 > 1000
    assert batches == [[0, 1], [2], [3, 4]]


def test_bad_timeouts_are_refused_with_the_flag(model_dir, capsys):  # noqa: F811
    from masklm.cli import main

    for flag, value in (("--request-timeout", "0"), ("--read-timeout", "nan"), ("--keep-alive-timeout", "-1"),
                        ("--max-fill-mask-cost", "0")):
        assert main(["serve", "--model", str(model_dir), "--port", "0", flag, value]) == 2
        err = capsys.readouterr().err
        assert flag in err and "Traceback" not in err and len(err.strip().splitlines()) == 1

