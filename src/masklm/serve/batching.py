"""Cross-request batching: requests wait on the event loop; one worker thread runs their model calls.

Handlers check a request's fields on the event loop and ``await Batcher.submit(job)``. Admission is
bounded: past ``max_queue`` requests admitted and not yet answered, ``submit`` raises
``ServeError("overloaded")`` (429 with ``Retry-After``). A dispatcher task hands the worker thread every
waiting job at once; the worker tokenizes all their texts in one call, answers the jobs whose inputs
break a bound, and runs the rest as model calls of compatible jobs (same task, same parameters) within
``max_batch_tokens`` (rows x longest input). While the worker runs, new requests gather for the next
hand-off, so batches grow with the load; a request that finds the worker idle waits ``batch_wait_ms``
for company. Each model call's requests are answered as it ends, with one wake-up of the event loop.
Model work never runs on the event loop. If a merged call fails on one request's input, each job is
rerun alone so only that request gets the error.

Work nobody waits for is dropped. A request is answered 504 once ``request_timeout`` seconds have passed
since it was admitted, and a request whose client disconnects is cancelled by the gate; either way its
job is marked ``dropped`` and its queue place freed at once. The worker never starts a model call for
dropped jobs (checked before each call, so also between the calls of one hand-off), and stops a running
call whose jobs are all dropped at its next network call: a forward pre-hook on the model's modules
raises ``Abandoned``, so a long generation ends after one more step, not after all of them. Fill-mask
jobs are tokenized first and refused past ``max_fill_mask_cost``; merged ones are cut so that no model call
passes that bound either (a merged call decodes the largest ``top_k`` for every row).
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from masklm.errors import MaskLMError
from masklm.inference.batching import WindowSpec, budget_cuts
from masklm.serve.limits import Limits, ServeError, check_cost, check_encoded
from masklm.serve.metrics import Metrics
from masklm.serve.steps import generate_with_steps

BATCHABLE = ("fill_mask", "score", "embed")

Outcome = tuple["Job", Any, BaseException | None]   # (job, result, error)


@dataclass
class Job:
    """One request's model work. ``ids`` (token ids per text) is filled in by the worker."""

    kind: str                   # fill_mask | score | embed | generate | generate_steps
    key: tuple                  # equal (kind, key) may share a model call
    texts: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    ids: list[list[int]] = field(default_factory=list)
    future: asyncio.Future | None = None
    dropped: bool = False       # its client left or its deadline passed: do not run it (set on the event loop)
    units: int = 0              # fill-mask: tokens x masks summed over its inputs (set by the worker)

    @property
    def width(self) -> int:
        """The longest input, in tokens (1 before tokenization)."""
        return max(map(len, self.ids), default=1)


def _candidates(job: Job) -> int:
    """Candidates a fill-mask job asks for at each mask: ``top_k``, or fewer when it names fewer targets."""
    k = job.params.get("top_k", 1)
    targets = job.params.get("targets")
    return min(k, len(targets)) if targets else k


def _trim(result: list, k: int) -> list:
    """A fill-mask result (one list of candidates, or one per mask) cut to ``k`` candidates."""
    if result and isinstance(result[0], list):
        return [r[:k] for r in result]
    return result[:k]


class Abandoned(Exception):
    """Raised inside a model call whose every request was dropped, to stop it (see the module docstring)."""


class Runner:
    """The worker thread's side: tokenizes and checks jobs, then runs them as batched pipeline calls."""

    def __init__(self, pipe, limits: Limits, metrics: Metrics) -> None:
        self.pipe = pipe
        self.limits = limits
        self.metrics = metrics
        self._running: list[Job] = []   # the jobs of the model call in progress
        if pipe is not None:  # every network call goes through one of the model's direct submodules
            for module in pipe.model.children():
                module.register_forward_pre_hook(self._stop_if_abandoned)

    def _stop_if_abandoned(self, module: Any, args: Any) -> None:
        running = self._running
        if running and all(job.dropped for job in running):
            raise Abandoned

    def run(self, jobs: list[Job], settle: Callable[[list[Outcome]], None]) -> None:
        """Answer every job of ``jobs`` through ``settle``: refusals first, then each model call's jobs."""
        ready = self._prepare([job for job in jobs if not job.dropped], settle)
        for batch in self._batches(ready):
            settle(self._call(batch))

    def _prepare(self, jobs: list[Job], settle: Callable[[list[Outcome]], None]) -> list[Job]:
        """Tokenize the batchable jobs' texts in one call; refuse those past a bound or without a mask."""
        tok = self.pipe.tokenizer
        texts = [t for job in jobs if job.kind in BATCHABLE for t in job.texts]
        encodings = iter(tok.encode_batch(texts) if texts else ())
        ready: list[Job] = []
        refused: list[Outcome] = []
        for job in jobs:
            if job.kind in BATCHABLE:
                rows = [next(encodings).ids for _ in job.texts]
                try:
                    # an embedding read in windows may be as long as one model call's token budget
                    windowed = job.kind == "embed" and job.params.get("window_pool") is not None
                    limits = replace(self.limits, max_tokens=self.limits.max_batch_tokens) if windowed else self.limits
                    job.ids = check_encoded(rows, job.texts, limits)
                    if job.kind == "fill_mask":
                        self._check_fill_mask(job, tok)
                except ServeError as exc:
                    refused.append((job, None, exc))
                    continue
            ready.append(job)
        if refused:
            settle(refused)
        return ready

    def _check_fill_mask(self, job: Job, tok) -> None:
        """A mask in every input, and the work within ``max_fill_mask_cost`` (sets ``job.units``)."""
        for i, ids in enumerate(job.ids):
            if tok.mask_id not in ids:
                raise ServeError(f"inputs[{i}] has no {tok.mask_token}; put {tok.mask_token} "
                                 "where a word should be predicted")
        job.units = sum(len(ids) * ids.count(tok.mask_id) for ids in job.ids)
        check_cost("this fill-mask request", job.units * _candidates(job), "tokens x masks x top_k",
                   self.limits.max_fill_mask_cost, "--max-fill-mask-cost",
                   "send fewer masks or inputs, or a smaller top_k")

    def _batches(self, jobs: list[Job]) -> Iterator[list[Job]]:
        """Compatible jobs in arrival order, cut where ``rows x longest input`` would pass the budget (and,
        for fill-mask, where the merged call's cost would pass ``max_fill_mask_cost``)."""
        groups: dict[tuple, list[Job]] = {}
        for job in jobs:
            if job.kind in BATCHABLE:
                groups.setdefault((job.kind, job.key), []).append(job)
            else:
                yield [job]
        for group in groups.values():
            for part in self._cost_cuts(group) if group[0].kind == "fill_mask" else [group]:
                sizes = [(len(job.texts), job.width) for job in part]
                for lo, hi in budget_cuts(sizes, self.limits.max_batch_tokens):
                    yield part[lo:hi]

    def _cost_cuts(self, jobs: list[Job]) -> Iterator[list[Job]]:
        """Fill-mask jobs in order, cut where ``sum(units) x largest top_k`` would pass the cost bound."""
        part: list[Job] = []
        units = k = 0
        for job in jobs:
            wider = max(k, _candidates(job))
            if part and (units + job.units) * wider > self.limits.max_fill_mask_cost:
                yield part
                part, units, wider = [], 0, _candidates(job)
            part.append(job)
            units += job.units
            k = wider
        if part:
            yield part

    def _call(self, batch: list[Job]) -> list[Outcome]:
        """One model call for ``batch``; dropped jobs are skipped, and a call left with none stops."""
        batch = [job for job in batch if not job.dropped]
        if not batch:
            return []
        rows = sum(len(job.texts) for job in batch)
        self.metrics.batch(len(batch), rows, rows * max(job.width for job in batch))
        self._running = batch
        try:
            results = getattr(self, batch[0].kind)(batch)
        except Abandoned:
            self.metrics.stopped_call()
            return []
        except MaskLMError as exc:
            if len(batch) > 1:  # one request's input broke the merged call: serve each alone
                return [out for job in batch for out in self._call([job])]
            return [(batch[0], None, exc)]
        except Exception as exc:  # a bug: log it, answer 500, keep serving
            traceback.print_exc(file=sys.stderr)
            return [(job, None, exc) for job in batch]
        finally:
            self._running = []
        return [(job, result, None) for job, result in zip(batch, results)]

    @staticmethod
    def _split(jobs: list[Job], rows: list) -> list[list]:
        out, lo = [], 0
        for job in jobs:
            out.append(rows[lo:lo + len(job.texts)])
            lo += len(job.texts)
        return out

    def fill_mask(self, jobs: list[Job]) -> list[Any]:
        k = max(job.params["top_k"] for job in jobs)
        ids = [row for job in jobs for row in job.ids]
        rows = self.pipe.fill_mask_encoded(ids, top_k=k, targets=jobs[0].params.get("targets"), batch_size=len(ids))
        results = []
        for job, part in zip(jobs, self._split(jobs, rows)):
            part = [_trim(r, job.params["top_k"]) for r in part]
            results.append(part[0] if len(part) == 1 else part)  # unwrapped like HF's pipeline
        return results

    def score(self, jobs: list[Job]) -> list[Any]:
        p = jobs[0].params
        texts = [t for job in jobs for t in job.texts]
        rows = self.pipe.score(texts, metric=p["metric"], reduction=p["reduction"], per_token=p["per_token"],
                               batch_tokens=self.limits.max_batch_tokens)
        return self._split(jobs, rows)

    def embed(self, jobs: list[Job]) -> list[Any]:
        p = jobs[0].params
        texts = [t for job in jobs for t in job.texts]
        pool = p.get("window_pool")
        used: list[int] = []  # windows per text, when read in windows
        vectors = self.pipe.embed(texts, pooling=p["pooling"], normalize=p["normalize"],
                                  batch_tokens=self.limits.max_batch_tokens,
                                  windows=WindowSpec(pool=pool) if pool is not None else None, windows_used=used)
        parts = self._split(jobs, vectors)
        return parts if pool is None else list(zip(parts, self._split(jobs, used)))

    def generate(self, jobs: list[Job]) -> list[Any]:
        return [self.pipe.generate(**job.params) for job in jobs]

    def generate_steps(self, jobs: list[Job]) -> list[Any]:
        return [generate_with_steps(self.pipe, job.params) for job in jobs]


class Batcher:
    """The bounded admission, the waiting jobs, and the dispatcher that feeds the worker thread."""

    def __init__(self, runner: Runner, limits: Limits, metrics: Metrics) -> None:
        self.runner = runner
        self.limits = limits
        self.metrics = metrics
        self.waiting: deque[Job] = deque()
        self.pending = 0                  # admitted and not yet answered
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="masklm-model")
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the dispatcher; call on the server's event loop."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._dispatch())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def submit(self, job: Job) -> Any:
        """Queue ``job`` and wait for its result; 429 when ``max_queue`` requests are already admitted, 504
        past ``request_timeout``. Cancelling the wait (the client left) drops the job."""
        if self.pending >= self.limits.max_queue:
            raise ServeError(f"server busy: {self.pending} requests waiting (limit {self.limits.max_queue}); "
                             "retry after the Retry-After seconds", "overloaded", headers={"Retry-After": "1"})
        job.future = asyncio.get_running_loop().create_future()
        self.pending += 1
        self.metrics.queue_depth = self.pending
        self.waiting.append(job)
        self._wake.set()
        try:
            return await asyncio.wait_for(job.future, self.limits.request_timeout)
        except asyncio.TimeoutError:
            job.dropped = True
            self.metrics.dropped("deadline")
            raise ServeError(f"the request was not answered within this server's limit of "
                             f"{self.limits.request_timeout:g} s (--request-timeout); ask for less work or "
                             "retry later", "timeout") from None
        except asyncio.CancelledError:
            job.dropped = True
            self.metrics.dropped("disconnected")
            raise
        finally:
            self.pending -= 1
            self.metrics.queue_depth = self.pending

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()

        def settle(outcomes: list[Outcome]) -> None:  # worker thread -> event loop, once per model call
            loop.call_soon_threadsafe(self._settle, outcomes)

        while True:
            if not self.waiting:
                self._wake.clear()
                await self._wake.wait()
                if self.limits.batch_wait_ms:  # the worker was idle: let requests sent together join
                    await asyncio.sleep(self.limits.batch_wait_ms / 1000)
            jobs = [job for job in self.waiting if not job.dropped]
            self.waiting.clear()
            if not jobs:
                continue
            try:
                await loop.run_in_executor(self._executor, self.runner.run, jobs, settle)
            except Exception as exc:  # a bug outside the model calls: answer 500, keep serving
                traceback.print_exc(file=sys.stderr)
                self._settle([(job, None, exc) for job in jobs])

    @staticmethod
    def _settle(outcomes: list[Outcome]) -> None:
        for job, result, exc in outcomes:
            if job.future.done():
                continue
            if exc is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)
