"""Prometheus metrics: HTTP requests by route and status, gRPC calls by method and code,
latencies, queue depth, batches, inference.

Each app has its own registry, so several apps in one process (tests) do not collide. Under
``serve --workers N`` the command points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before the
workers start: prometheus_client then keeps every worker's values in files there, and /metrics,
whichever worker answers it, reports counters and histograms summed over all workers and gauges
summed over the live ones (``ready`` is the minimum: 1 once every worker is ready). Without it each
worker would report only its own counters, which Prometheus reads as resets.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["MULTIPROCESS_VARIABLE", "Metrics", "MetricsMiddleware"]

# prometheus_client's own variable: set, its metric values live in files shared by the workers.
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)


class Metrics:
    """The service's metrics, in their own registry."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_VARIABLE))
        self._queue_depth: Callable[[], float] | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "dyhead_http_requests_total",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "dyhead_http_request_duration_seconds",
            "Time from request start to the end of the response, by route template.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.grpc_requests = Counter(
            "dyhead_grpc_requests_total",
            "gRPC calls by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.grpc_latency = Histogram(
            "dyhead_grpc_request_duration_seconds",
            "Time from a gRPC call's start to its answer, by method.",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter(
            "dyhead_images_total", "Images answered with detections.", registry=self.registry
        )
        self.rejected = Counter(
            "dyhead_rejected_requests_total",
            "Requests refused before inference, by reason (queue_full, timeout, not_ready).",
            ["reason"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "dyhead_queue_depth",
            "Images waiting for a backend call.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.in_flight = Gauge(
            "dyhead_images_in_flight",
            "Images accepted and not yet answered (decoding, queued or running).",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.batch_size = Histogram(
            "dyhead_batch_size", "Images per backend call.", buckets=_BATCH_BUCKETS, registry=self.registry
        )
        self.inference_seconds = Histogram(
            "dyhead_inference_seconds", "Duration of one backend call.", buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.preprocess_seconds = Histogram(
            "dyhead_preprocess_seconds",
            "Decoding, resizing and normalising one image.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.connections_closed = Counter(
            "dyhead_connections_closed_total",
            "Connections the server closed before a request reached the app, by reason "
            "(headers_timeout, body_timeout, too_many_connections).",
            ["reason"],
            registry=self.registry,
        )
        self.ready = Gauge(
            "dyhead_ready",
            "1 once the model is loaded and warmed up.",
            registry=self.registry,
            multiprocess_mode="livemin",
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference_seconds.observe(seconds)
        self._refresh_queue_depth()

    def track_queue_depth(self, depth: Callable[[], float]) -> None:
        """Report ``depth()`` as the queue depth: read at each scrape in one process; across
        workers (where a callback cannot be read by another process) stored at each batch and
        scrape."""
        if self.multiprocess:
            self._queue_depth = depth
        else:
            self.queue_depth.set_function(depth)

    def _refresh_queue_depth(self) -> None:
        if self._queue_depth is not None:
            self.queue_depth.set(self._queue_depth())

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        self._refresh_queue_depth()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)


class MetricsMiddleware:
    """Counts every HTTP response by route template and status, and times it.

    The route label is the matched path template (``/v2/models/{name}/infer``), never the raw
    path, so that arbitrary URLs cannot grow the number of series; unmatched paths share one.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            method = method if method in _METHODS else "other"
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.latency.labels(template, method).observe(time.perf_counter() - start)
