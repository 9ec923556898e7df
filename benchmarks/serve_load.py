"""Load test for ``masklm serve``: fill-mask requests at a fixed concurrency, beside HF's pipeline.

Starts ``python -m masklm serve`` on a free 127.0.0.1 port (loopback only) and, as the anchor a user
would write, a FastAPI app around ``transformers.pipeline("fill-mask")`` under uvicorn in a subprocess
(this script with ``--hf-serve DIR``: one ``POST /fill-mask`` route, a plain ``def`` handler that
FastAPI runs in its thread pool). Each round sends ``--requests`` single-text fill-mask requests from
``--concurrency`` keep-alive connections to each server in turn (the other idles), then calls the
pipeline once per request in this process (today's in-process figure); the order rotates per round.
Every answer's best candidate is checked against masklm's. Each phase stops at ``--time-limit`` seconds.
Prints one JSON line per round (requests/s, p50/p99 latency and errors per phase, the ratios, the load
average), then the summary JSON.

The load generator is a small asyncio HTTP/1.1 client (one request in flight per connection, like
``wrk``); it shares the machine with the server, so it must cost little: its CPU seconds are reported.
(An httpx client spent about 2.1 ms of CPU per request here, more than the pipeline call it is compared with.)

    python benchmarks/serve_load.py                       # builds a tiny BERT folder in a temp dir
    python benchmarks/serve_load.py --model DIR --requests 2000 --concurrency 32 --rounds 3 --out serve.json
    python benchmarks/serve_load.py --requests 40 --concurrency 4 --rounds 1   # quick end-to-end check
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the a cat dog bird sat ran flew on under over mat tree house and then river king queen "
         "old young small large green walked slept under behind near").split()


def tiny_model(out: Path) -> Path:
    """A small BERT folder (random weights; loads in transformers as BertForMaskedLM)."""
    import torch

    from masklm.config import ModelConfig
    from masklm.modeldir import save_model_dir
    from masklm.models import build_model
    from masklm.tokenizer import train_tokenizer

    rng = random.Random(0)
    tok = train_tokenizer([" ".join(rng.choice(WORDS) for _ in range(16)) for _ in range(500)],
                          kind="wordpiece", vocab_size=200, min_frequency=1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="bert", vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=256, max_position_embeddings=128))
    return save_model_dir(out, model, tok, training_args={"objectives": ["mlm"]})


def texts(n: int) -> list[str]:
    rng = random.Random(1)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(6, 14))]
        words[rng.randrange(len(words))] = "[MASK]"
        out.append(" ".join(words))
    return out


def summary(latencies: list[float], errors: int, seconds: float) -> dict:
    lat = sorted(latencies)
    pick = (lambda q: round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 3)) if lat else (lambda q: None)
    return {"requests": len(lat) + errors, "ok": len(lat), "errors": errors, "seconds": round(seconds, 3),
            "requests_per_s": round(len(lat) / seconds, 1) if seconds else None,
            "p50_ms": pick(0.50), "p99_ms": pick(0.99)}


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    """Send one request on a keep-alive connection; the status and body of the answer."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next((int(v) for k, _, v in (line.partition(":") for line in lines[1:])
                   if k.strip().lower() == "content-length"), None)
    if length is None:
        raise ValueError("answer without Content-Length")
    return status, await reader.readexactly(length)


async def load(url: str, items: list[str], concurrency: int, time_limit: float, top_k: int) -> tuple[dict, dict]:
    """Fill-mask requests for ``items`` from ``concurrency`` connections; the summary and the answers by index."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    latencies: list[float] = []
    answers: dict[int, list] = {}
    errors = 0
    counter = iter(range(len(items)))
    deadline = time.perf_counter() + time_limit

    async def worker() -> None:
        nonlocal errors
        conn = None
        for i in counter:
            if time.perf_counter() > deadline:
                break
            body = json.dumps({"inputs": items[i], "parameters": {"top_k": top_k}}).encode()
            request = (f"POST /fill-mask HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            t0 = time.perf_counter()
            try:
                conn = conn or await asyncio.open_connection(host, int(port))
                status, payload = await _exchange(*conn, request)
                answer = json.loads(payload)
                ok = status == 200 and isinstance(answer, list)
            except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                ok = False
                if conn is not None:
                    conn[1].close()
                conn = None
            if ok:
                latencies.append(time.perf_counter() - t0)
                answers[i] = answer
            else:
                errors += 1
        if conn is not None:
            conn[1].close()

    cpu = time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    seconds = time.perf_counter() - start
    return summary(latencies, errors, seconds) | {"client_cpu_s": round(time.process_time() - cpu, 3)}, answers


def same_best(a: list, b: list) -> bool:
    """The best candidates agree: same token, scores within 1e-4."""
    return a[0]["token"] == b[0]["token"] and abs(a[0]["score"] - b[0]["score"]) <= 1e-4


def hf_pipeline(model_dir: Path, items: list[str], time_limit: float, top_k: int, served: dict) -> dict:
    import transformers

    pipe = transformers.pipeline("fill-mask", model=str(model_dir), tokenizer=str(model_dir), device="cpu")
    for text in items[:20]:
        pipe(text, top_k=top_k)
    latencies: list[float] = []
    errors = differ = 0
    start = time.perf_counter()
    for i, text in enumerate(items):
        if time.perf_counter() - start > time_limit:
            break
        t0 = time.perf_counter()
        try:
            out = pipe(text, top_k=top_k)
            latencies.append(time.perf_counter() - t0)
        except Exception:  # noqa: BLE001 - counted, as the server's errors are
            errors += 1
            continue
        differ += i in served and not same_best(out, served[i])
    return summary(latencies, errors, time.perf_counter() - start) | {
        "transformers": transformers.__version__, "server_answers_differing": differ}


def hf_serve(model_dir: str, port: int) -> None:
    """The anchor server: what a user who wraps the transformers pipeline in FastAPI writes."""
    import uvicorn
    from fastapi import Body, FastAPI
    from transformers import pipeline

    pipe = pipeline("fill-mask", model=model_dir, tokenizer=model_dir, device="cpu")
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/fill-mask")
    def fill_mask(request: dict = Body(...)) -> list:  # noqa: B008 - FastAPI idiom; {"inputs", "parameters"}
        return pipe(request["inputs"], top_k=int(request.get("parameters", {}).get("top_k", 5)))

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_hf_server(model_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--hf-serve", str(model_dir), "--port", str(port)],
                            stderr=open(log, "w"), stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the FastAPI + pipeline server did not start: {log.read_text()}")


def start_server(model_dir: Path, log: Path, flags: list[str]) -> tuple[subprocess.Popen, str]:
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "masklm", "serve", "--model", str(model_dir), "--host",
                             "127.0.0.1", "--port", "0", *flags], stderr=open(log, "w"), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        m = re.search(r"http://(127\.0\.0\.1:\d+)", log.read_text())
        if m:
            url = f"http://{m.group(1)}"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    return proc, url
            except httpx.TransportError:
                pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server did not start: {log.read_text()}")


def _load_average() -> float:
    return os.getloadavg()[0]


def run_round(r: int, urls: dict, model_dir: Path, items: list[str], args) -> dict:
    """One round: each server under load, then the in-process pipeline, in an order rotating with r."""
    phases = ["masklm_server", "hf_server"] + ([] if args.skip_hf else ["hf_pipeline"])
    phases = phases[r % len(phases):] + phases[:r % len(phases)]
    out, answers = {}, {}
    for phase in phases:
        if phase == "hf_pipeline":
            continue  # needs masklm's answers to compare: after the servers
        out[phase], answers[phase] = asyncio.run(load(urls[phase], items, args.concurrency, args.time_limit,
                                                      args.top_k))
    out["hf_server"]["answers_differing_from_masklm"] = sum(
        not same_best(a, answers["masklm_server"][i]) for i, a in answers["hf_server"].items()
        if i in answers["masklm_server"])
    if not args.skip_hf:
        out["hf_pipeline"] = hf_pipeline(model_dir, items, args.time_limit, args.top_k, answers["masklm_server"])
    ours = out["masklm_server"]["requests_per_s"] or 0.0
    line = {"round": r + 1, "order": phases, **out, "load_average_1min": _load_average(),
            "ratio_vs_hf_server": round(ours / out["hf_server"]["requests_per_s"], 2)}
    if not args.skip_hf:
        line["ratio_vs_hf_pipeline_in_process"] = round(ours / out["hf_pipeline"]["requests_per_s"], 2)
    print(json.dumps(line), flush=True)
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="model folder (default: build a tiny BERT in a temp dir)")
    ap.add_argument("--requests", type=int, default=2000, help="requests per phase and round")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per phase at most")
    ap.add_argument("--server-flag", action="append", default=[], help="extra 'masklm serve' flag (repeat)")
    ap.add_argument("--skip-hf", action="store_true", help="skip the in-process pipeline phase")
    ap.add_argument("--out", help="also write the summary JSON here")
    ap.add_argument("--hf-serve", metavar="DIR", help=argparse.SUPPRESS)  # internal: run the anchor server
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hf_serve:
        return hf_serve(args.hf_serve, args.port)
    if not 1 <= args.requests <= 100_000 or not 1 <= args.concurrency <= 256 or not 1 <= args.rounds <= 20:
        raise SystemExit("--requests must be 1..100000, --concurrency 1..256 and --rounds 1..20")

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else tiny_model(Path(tmp) / "model")
        items = texts(args.requests)
        procs = []
        try:
            proc, ours = start_server(model_dir, Path(tmp) / "server.log", args.server_flag)
            procs.append(proc)
            proc, theirs = start_hf_server(model_dir, Path(tmp) / "hf_server.log")
            procs.append(proc)
            urls = {"masklm_server": ours, "hf_server": theirs}
            for url in urls.values():  # warm-up
                asyncio.run(load(url, items[:100], min(args.concurrency, 8), 30, args.top_k))
            rounds = [run_round(r, urls, model_dir, items, args) for r in range(args.rounds)]
            import httpx

            metrics = httpx.get(ours + "/metrics").text
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)
        batches = re.search(r"masklm_batch_requests_count (\d+)", metrics)
        best = {k: max(rounds, key=lambda line: line[k]["requests_per_s"] or 0)[k]
                for k in rounds[0] if isinstance(rounds[0][k], dict)}
        result = {
            "model": "tiny BERT (hidden 64, 2 layers, vocab 200)" if not args.model else str(args.model),
            "requests": args.requests, "concurrency": args.concurrency, "top_k": args.top_k,
            "rounds": args.rounds, "cpus": os.cpu_count(), "load_average_after": os.getloadavg(),
            "server": best["masklm_server"] | {"model_calls_incl_warmup": int(batches.group(1)) if batches else None},
            "hf_server": best["hf_server"],
            "ratio_vs_hf_server_per_round": [line["ratio_vs_hf_server"] for line in rounds],
        }
        if not args.skip_hf:
            result["hf_pipeline"] = best["hf_pipeline"]
            result["ratio_requests_per_s"] = round(result["server"]["requests_per_s"]
                                                   / best["hf_pipeline"]["requests_per_s"], 2)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
