"""Cross-request batching: one worker thread, a queue, and a token budget per model call.

Handlers tokenize and validate a request on the event loop, then ``await Batcher.submit(job)``.
Admission is bounded: past ``max_queue`` requests admitted and not yet answered, ``submit`` raises
``ServeError("overloaded")`` (429 with ``Retry-After``). The worker thread takes the first waiting job,
collects the compatible jobs that arrive within ``batch_wait_ms`` (same task, same parameters) while
``rows x longest input`` stays within ``max_batch_tokens``, runs them as one pipeline call and hands
each request its slice. Model work never runs on the event loop. If a merged call fails on one
request's input, each job is rerun alone so only that request gets the error.
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from masklm.errors import MaskLMError
from masklm.serve.limits import Limits, ServeError
from masklm.serve.metrics import Metrics

BATCHABLE = ("fill_mask", "score", "embed")


@dataclass
class Job:
    """One request's model work."""

    kind: str                   # fill_mask | score | embed | generate
    key: tuple                  # equal (kind, key) may share a model call
    texts: list[str]
    width: int                  # longest input, in tokens
    params: dict[str, Any] = field(default_factory=dict)
    future: asyncio.Future | None = None
    loop: asyncio.AbstractEventLoop | None = None

    def cost(self, width: int | None = None) -> int:
        return len(self.texts) * (width or self.width)


def _trim(result: list, k: int) -> list:
    """A fill-mask result (one list of candidates, or one per mask) cut to ``k`` candidates."""
    if result and isinstance(result[0], list):
        return [r[:k] for r in result]
    return result[:k]


class Runner:
    """Runs a list of compatible jobs as one pipeline call; returns one result per job."""

    def __init__(self, pipe, limits: Limits) -> None:
        self.pipe = pipe
        self.limits = limits

    def __call__(self, jobs: list[Job]) -> list[Any]:
        return getattr(self, jobs[0].kind)(jobs)

    @staticmethod
    def _split(jobs: list[Job], rows: list) -> list[list]:
        out, lo = [], 0
        for job in jobs:
            out.append(rows[lo:lo + len(job.texts)])
            lo += len(job.texts)
        return out

    def fill_mask(self, jobs: list[Job]) -> list[Any]:
        texts = [t for j in jobs for t in j.texts]
        k = max(j.params["top_k"] for j in jobs)
        rows = self.pipe.fill_mask(texts, top_k=k, targets=jobs[0].params.get("targets"),
                                   batch_size=len(texts))
        if len(texts) == 1:  # the pipeline unwraps a one-element list
            rows = [rows]
        results = []
        for job, part in zip(jobs, self._split(jobs, rows)):
            part = [_trim(r, job.params["top_k"]) for r in part]
            results.append(part[0] if len(part) == 1 else part)  # unwrapped like HF's pipeline
        return results

    def score(self, jobs: list[Job]) -> list[Any]:
        p = jobs[0].params
        texts = [t for j in jobs for t in j.texts]
        rows = self.pipe.score(texts, metric=p["metric"], reduction=p["reduction"], per_token=p["per_token"],
                               batch_tokens=self.limits.max_batch_tokens)
        return self._split(jobs, rows)

    def embed(self, jobs: list[Job]) -> list[Any]:
        p = jobs[0].params
        texts = [t for j in jobs for t in j.texts]
        vectors = self.pipe.embed(texts, pooling=p["pooling"], normalize=p["normalize"],
                                  batch_tokens=self.limits.max_batch_tokens)
        return self._split(jobs, vectors)

    def generate(self, jobs: list[Job]) -> list[Any]:
        return [self.pipe.generate(**job.params) for job in jobs]


class Batcher:
    """The bounded queue and the worker thread that serves it."""

    def __init__(self, runner: Runner, limits: Limits, metrics: Metrics) -> None:
        self.runner = runner
        self.limits = limits
        self.metrics = metrics
        self.queue: queue.Queue[Job] = queue.Queue()
        self.held: deque[Job] = deque()   # taken from the queue but not fitting the last batch
        self.pending = 0                  # admitted and not yet answered (touched on the event loop only)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- event-loop side --------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="masklm-batcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def submit(self, job: Job) -> Any:
        """Queue ``job`` and wait for its result; 429 when ``max_queue`` requests are already admitted."""
        if self.pending >= self.limits.max_queue:
            raise ServeError(f"server busy: {self.pending} requests waiting (limit {self.limits.max_queue}); "
                             "retry after the Retry-After seconds", "overloaded", headers={"Retry-After": "1"})
        job.loop = asyncio.get_running_loop()
        job.future = job.loop.create_future()
        self.pending += 1
        self.metrics.queue_depth = self.pending
        try:
            self.queue.put(job)
            return await job.future
        finally:
            self.pending -= 1
            self.metrics.queue_depth = self.pending

    # ---- worker side ------------------------------------------------------------------------------

    def _next(self, timeout: float) -> Job | None:
        if self.held:
            return self.held.popleft()
        try:
            return self.queue.get(timeout=timeout) if timeout > 0 else self.queue.get_nowait()
        except queue.Empty:
            return None

    def _collect(self, first: Job) -> list[Job]:
        """``first`` plus the compatible jobs waiting or arriving within the wait window, in budget."""
        batch, width = [first], first.width
        if first.kind not in BATCHABLE:
            return batch
        rows = len(first.texts)
        budget = self.limits.max_batch_tokens
        deadline = time.monotonic() + self.limits.batch_wait_ms / 1000
        skipped: list[Job] = []
        held = len(self.held)
        while True:
            timeout = 0.0 if held > 0 else deadline - time.monotonic()
            if held == 0 and timeout <= 0 and self.queue.empty():
                break
            job = self._next(max(timeout, 0.0))
            if job is None:
                break
            held -= 1
            w = max(width, job.width)
            if (job.kind, job.key) != (first.kind, first.key):
                skipped.append(job)
                continue
            if (rows + len(job.texts)) * w > budget:
                skipped.append(job)
                break
            batch.append(job)
            rows += len(job.texts)
            width = w
        self.held.extendleft(reversed(skipped))
        return batch

    def _work(self) -> None:
        while not self._stop.is_set():
            first = self._next(0.1)
            if first is None:
                continue
            batch = [j for j in self._collect(first) if not (j.future is None or j.future.cancelled())]
            if batch:
                self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        rows = sum(len(j.texts) for j in batch)
        self.metrics.batch(len(batch), rows, rows * max(j.width for j in batch))
        try:
            results = self.runner(batch)
        except MaskLMError as exc:
            if len(batch) > 1:  # one request's input broke the merged call: serve each alone
                for job in batch:
                    self._run([job])
                return
            return self._settle(batch[0], exc=exc)
        except Exception as exc:  # a bug: log it, answer 500, keep serving
            traceback.print_exc(file=sys.stderr)
            for job in batch:
                self._settle(job, exc=exc)
            return
        for job, result in zip(batch, results):
            self._settle(job, result=result)

    @staticmethod
    def _settle(job: Job, result: Any = None, exc: BaseException | None = None) -> None:
        def done() -> None:
            if job.future.done():
                return
            if exc is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)

        job.loop.call_soon_threadsafe(done)
