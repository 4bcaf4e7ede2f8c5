"""Serving metrics through Ray's metrics API (``ray.serve.metrics``): each node's metrics
agent exports them for Prometheus on its metrics export port (``ray_`` prefix; Serve adds
the ``deployment``, ``replica`` and ``application`` tags).

    ray_ecomtl_requests_total{task, path, status}        every HTTP answer, per task it asked for
    ray_ecomtl_errors_total{task, path, status, code}     the JSON refusals, by error code
    ray_ecomtl_request_latency_ms{task, path}             histogram, edge to last byte sent
    ray_ecomtl_in_flight_requests                         gauge, requests admitted at the ingress
    ray_ecomtl_batch_rows{stage, task}                    histogram, texts per @serve.batch pass
    ray_ecomtl_truncated_texts_total{task}                texts cut at the source's max_length

Ray exports a histogram's ``_sum`` as an estimate from bucket midpoints; ``_count`` and
the buckets are exact. Label values are bounded: ``task`` is a task of the bundle or ``none`` (never a name a
client sent), ``path`` a route template or ``other``. A /v1/predict request counts once
for each task it names. The edge (serve/guards.py) opens a ``Request`` per HTTP request
in a context variable; the handlers and the error builder add what they learn (the tasks
of a /v1/predict body, the error code) and the edge records it all once the answer is
sent.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, Optional

log = logging.getLogger("ray.serve")

NO_TASK = "none"
TASK_ROUTE = "/v1/tasks/"
PATHS = {"/healthz", "/readyz", "/v1/tasks", "/v1/predict", "/docs", "/openapi.json"}
LATENCY_MS = [1, 2, 5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000, 10000, 30000]
ROWS = [1, 2, 4, 8, 16, 32, 64, 128, 256]


@dataclass
class Request:
    path: str
    tasks: list[str]
    t0: float = field(default_factory=time.perf_counter)
    status: int = 0
    code: Optional[str] = None


_current: contextvars.ContextVar[Optional[Request]] = contextvars.ContextVar("ecomtl_request", default=None)


def labels(path: str, known_tasks: Iterable[str]) -> tuple[str, list[str]]:
    """(path label, tasks) of a request path: ``/v1/tasks/rating`` → the template and
    ``["rating"]``; an unknown task or path maps to a fixed label."""
    if path.startswith(TASK_ROUTE):
        name = path[len(TASK_ROUTE):]
        return TASK_ROUTE + "{task}", [name] if name in set(known_tasks) else []
    return (path if path in PATHS else "other"), []


class Metrics:
    """The metric objects of one replica process (created there: Serve reads the replica's
    context for its tags when a metric is made)."""

    def __init__(self):
        from ray.serve.metrics import Counter, Gauge, Histogram

        self.requests = Counter("ecomtl_requests", "HTTP answers per task and status", ("task", "path", "status"))
        self.errors = Counter("ecomtl_errors", "JSON error answers per task and error code",
                              ("task", "path", "status", "code"))
        self.latency = Histogram("ecomtl_request_latency_ms", "time from the edge to the answer sent, ms",
                                 LATENCY_MS, ("task", "path"))
        self.in_flight = Gauge("ecomtl_in_flight_requests", "requests admitted at the ingress replica")
        self.batch_rows = Histogram("ecomtl_batch_rows", "texts in one batched forward pass", ROWS, ("stage", "task"))
        self.truncated = Counter("ecomtl_truncated_texts", "texts truncated at the source's max_length", ("task",))


@lru_cache(maxsize=None)
def registry() -> Metrics:
    return Metrics()


def quiet(record):
    """A metric that cannot be recorded is logged, never the cause of a failed request."""
    @functools.wraps(record)
    def run(*args, **kwargs):
        try:
            return record(*args, **kwargs)
        except Exception:
            log.exception("metric %s not recorded", record.__name__)
    return run


# -- the edge's request record -------------------------------------------------------------
def start(path: str, known_tasks: Iterable[str]) -> Request:
    path_label, tasks = labels(path, known_tasks)
    req = Request(path_label, tasks)
    _current.set(req)
    return req


def note_tasks(tasks: Iterable[str]) -> None:
    """The tasks a /v1/predict body named (after validation: only the bundle's)."""
    req = _current.get()
    if req is not None:
        req.tasks = list(tasks)


def note_error(code: str) -> None:
    """The code of the JSON error this request is answered with (the last one wins)."""
    req = _current.get()
    if req is not None:
        req.code = code


@quiet
def finish(req: Request) -> None:
    m, ms = registry(), (time.perf_counter() - req.t0) * 1000
    status = str(req.status)  # 0: no answer was started (the client went away, the request was cancelled)
    for task in req.tasks or [NO_TASK]:
        m.requests.inc(1, {"task": task, "path": req.path, "status": status})
        m.latency.observe(ms, {"task": task, "path": req.path})
        if req.code is not None and req.status >= 400:
            m.errors.inc(1, {"task": task, "path": req.path, "status": status, "code": req.code})


@quiet
def in_flight(n: int) -> None:
    registry().in_flight.set(n, {})


# -- inside the deployments ----------------------------------------------------------------
@quiet
def batch(stage: str, task: str, rows: int) -> None:
    registry().batch_rows.observe(rows, {"stage": stage, "task": task})


@quiet
def truncations(task: str, truncated: Iterable[bool]) -> None:
    n = sum(1 for t in truncated if t)
    if n:
        registry().truncated.inc(n, {"task": task})
