"""Prometheus figures of the service, served at ``GET /metrics`` beside the JSON of ``GET /stats``.

Every app gets its own `CollectorRegistry`, never prometheus_client's process-wide one, so two apps
in one process (tests, a notebook) count apart and importing this module registers nothing.

- ``uit_reid_http_requests_total{route, method, status}``: requests answered, by route template
  (``/image/{image_id}``, never the raw path; ``unmatched`` for paths no route serves). Refusals
  by the limits (400, 413, 429) are counted too: the middleware runs before them. Every label takes
  its value from a closed set, so no request can add a series: the route templates, the standard
  HTTP methods (`METHODS`, any other is ``other``) and the statuses the service answers with
  (`STATUSES`, any other by its class, ``5xx``).
- ``uit_reid_http_request_duration_seconds{route}``: a histogram of the time to answer.
- ``uit_reid_batch_size``: queries per text-encoder call (a summary: ``_count`` calls, ``_sum`` queries).
- ``uit_reid_queries_total`` and ``uit_reid_index_size``, read from the engine when scraped.
- ``process_resident_memory_bytes`` and the other ``process_*`` figures (Linux).

``GET /stats`` reads the same measurements (`ServiceMetrics.stats`): its resident memory is the
``process_resident_memory_bytes`` figure and its latency percentiles are taken over the durations of
the recent answered searches that the histogram counts, so each figure is measured in one place.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.process_collector import ProcessCollector
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from uit_reid.serve.engine import SearchEngine

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "METHODS", "SEARCH_ROUTE", "STATUSES", "RequestMetrics", "ServiceMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""Prometheus' classic text format, which every scraper reads (what ``/metrics`` answers with)."""
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the request latency histogram: a search takes milliseconds on a CPU."""
SEARCH_ROUTE = "/search"
"""The route whose answered requests (status 200) `/stats`'s latency percentiles are taken over."""
UNMATCHED = "unmatched"
"""The route label of requests for a path that no route serves."""
METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"})
"""The method label's values (RFC 9110's methods and PATCH); any other method is counted as ``other``."""
STATUSES = frozenset({200, 400, 404, 405, 408, 413, 422, 429, 431, 500, 503})
"""The status label's values: the statuses the service answers with; any other is counted by its class (``4xx``)."""


def _method_label(method: str) -> str:
    return method if method in METHODS else "other"


def _status_label(status: int) -> str:
    return str(status) if status in STATUSES else f"{min(max(status // 100, 1), 5)}xx"


class _EngineCollector:
    """The engine's own counters, read when ``/metrics`` is scraped (nothing is copied per request)."""

    def __init__(self, engine: SearchEngine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        yield GaugeMetricFamily("uit_reid_index_size", "images in the gallery index", value=len(engine))
        yield CounterMetricFamily("uit_reid_queries", "queries answered since start", value=engine.queries_served)
        yield SummaryMetricFamily(
            "uit_reid_batch_size", "queries per text-encoder call (micro-batch): _count calls, _sum queries",
            count_value=engine.batcher.batches, sum_value=engine.batcher.items,
        )


class ServiceMetrics:
    """One app's Prometheus registry: request counts and latencies, engine figures, process figures.

    ``latency_window``: how many recent answered searches the ``/stats`` percentiles are taken over.
    """

    def __init__(self, engine: SearchEngine, *, latency_window: int = 2000) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "uit_reid_http_requests", "HTTP requests answered, by route template, method and status",
            ("route", "method", "status"), registry=self.registry,
        )
        self.latency = Histogram(
            "uit_reid_http_request_duration_seconds", "seconds from a request's arrival to its answer, by route",
            ("route",), buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.registry.register(_EngineCollector(engine))
        self.process = ProcessCollector(registry=self.registry)
        self._searches: collections.deque[float] = collections.deque(maxlen=latency_window)
        self._lock = threading.Lock()

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, _method_label(method), _status_label(status)).inc()
        self.latency.labels(route).observe(seconds)
        if route == SEARCH_ROUTE and status == 200:
            with self._lock:
                self._searches.append(seconds)

    def resident_memory_mb(self) -> float | None:
        """``process_resident_memory_bytes`` in MiB (None where the platform does not report it)."""
        for family in self.process.collect():
            if family.name == "process_resident_memory_bytes":
                return round(family.samples[0].value / 2**20, 1)
        return None

    def stats(self) -> dict[str, Any]:
        """The figures of ``GET /stats`` measured here: resident memory and search latency percentiles
        (ms; None before the first answered search) over the recent searches."""
        with self._lock:
            lat = np.array(self._searches, dtype=np.float64) * 1000.0
        pct = {f"p{p}": (round(float(np.percentile(lat, p)), 3) if lat.size else None) for p in (50, 90, 99)}
        return {"resident_memory_mb": self.resident_memory_mb(), "latency_ms": {**pct, "window": int(lat.size)}}

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


def _route_of(scope: Scope) -> str:
    """The path template of the route that serves ``scope`` (a wrong method still names its route)."""
    app = scope.get("app")
    for route in getattr(getattr(app, "router", None), "routes", ()):
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return getattr(route, "path", UNMATCHED)
    return UNMATCHED


class RequestMetrics:
    """ASGI middleware that counts and times every HTTP request into a `ServiceMetrics`."""

    def __init__(self, app: ASGIApp, *, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500  # an exception that escapes becomes a 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe(_route_of(scope), scope["method"], status, time.perf_counter() - start)
