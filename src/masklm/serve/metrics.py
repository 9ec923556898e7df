"""Prometheus text metrics, kept in memory with a lock (no client library needed).

``masklm_requests_total{route,status}``, ``masklm_errors_total{route,error_type}``,
``masklm_request_duration_seconds{route}`` (histogram), ``masklm_batch_requests`` and
``masklm_batch_inputs`` (histograms of requests and texts per model call), ``masklm_batch_tokens``
(padded tokens per model call), ``masklm_queue_depth`` (requests admitted and not yet answered),
``masklm_jobs_dropped_total{reason}`` (requests whose work was dropped: ``disconnected`` when the client
left, ``deadline`` past ``--request-timeout``) and ``masklm_model_calls_stopped_total`` (model calls
stopped midway because every request in them was dropped).
"""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536)


class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics)."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1
        self.total += 1
        self.sum += value

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{_num(edge)}"}} {n}' for edge, n in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {self.sum:.6f}", f"{name}_count{suffix} {self.total}"]
        return out


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Thread-safe counters and histograms for the server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.errors: dict[tuple[str, str], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.batch_requests = Histogram(SIZE_BUCKETS)
        self.batch_inputs = Histogram(SIZE_BUCKETS)
        self.batch_tokens = Histogram(TOKEN_BUCKETS)
        self.queue_depth = 0
        self.dropped_jobs: dict[str, int] = {"disconnected": 0, "deadline": 0}
        self.stopped_calls = 0

    def request(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, status)] += 1
            if route not in self.latency:
                self.latency[route] = Histogram(LATENCY_BUCKETS)
            self.latency[route].observe(seconds)

    def error(self, route: str, error_type: str) -> None:
        with self._lock:
            self.errors[(route, error_type)] += 1

    def dropped(self, reason: str) -> None:
        with self._lock:
            self.dropped_jobs[reason] = self.dropped_jobs.get(reason, 0) + 1

    def stopped_call(self) -> None:
        with self._lock:
            self.stopped_calls += 1

    def batch(self, requests: int, inputs: int, tokens: int) -> None:
        with self._lock:
            self.batch_requests.observe(requests)
            self.batch_inputs.observe(inputs)
            self.batch_tokens.observe(tokens)

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        with self._lock:
            lines = ["# HELP masklm_requests_total HTTP requests answered, by route and status.",
                     "# TYPE masklm_requests_total counter"]
            lines += [f'masklm_requests_total{{route="{_esc(r)}",status="{s}"}} {n}'
                      for (r, s), n in sorted(self.requests.items())]
            lines += ["# HELP masklm_errors_total Error responses, by route and error_type.",
                      "# TYPE masklm_errors_total counter"]
            lines += [f'masklm_errors_total{{route="{_esc(r)}",error_type="{_esc(t)}"}} {n}'
                      for (r, t), n in sorted(self.errors.items())]
            lines += ["# HELP masklm_request_duration_seconds Time from request to response, by route.",
                      "# TYPE masklm_request_duration_seconds histogram"]
            for route, hist in sorted(self.latency.items()):
                lines += hist.lines("masklm_request_duration_seconds", f'route="{_esc(route)}"')
            for name, hist, text in (
                ("masklm_batch_requests", self.batch_requests, "Requests per model call."),
                ("masklm_batch_inputs", self.batch_inputs, "Texts per model call."),
                ("masklm_batch_tokens", self.batch_tokens, "Padded tokens per model call."),
            ):
                lines += [f"# HELP {name} {text}", f"# TYPE {name} histogram"] + hist.lines(name)
            lines += ["# HELP masklm_queue_depth Requests admitted and not yet answered.",
                      "# TYPE masklm_queue_depth gauge", f"masklm_queue_depth {self.queue_depth}"]
            lines += ["# HELP masklm_jobs_dropped_total Requests whose model work was dropped, by reason.",
                      "# TYPE masklm_jobs_dropped_total counter"]
            lines += [f'masklm_jobs_dropped_total{{reason="{_esc(r)}"}} {n}' for r, n in sorted(self.dropped_jobs.items())]
            lines += ["# HELP masklm_model_calls_stopped_total Model calls stopped because every request in them "
                      "was dropped.", "# TYPE masklm_model_calls_stopped_total counter",
                      f"masklm_model_calls_stopped_total {self.stopped_calls}"]
        return "\n".join(lines) + "\n"
