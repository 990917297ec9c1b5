"""Prometheus metrics: HTTP requests by route and status, gRPC calls by method and code,
latencies, queue depth, batches, inference.

Each app has its own registry, so several apps in one process (tests) do not collide.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Metrics", "MetricsMiddleware"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)


class Metrics:
    """The service's metrics, in their own registry."""

    def __init__(self) -> None:
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
            "dyhead_queue_depth", "Images waiting for a backend call.", registry=self.registry
        )
        self.in_flight = Gauge(
            "dyhead_images_in_flight",
            "Images accepted and not yet answered (decoding, queued or running).",
            registry=self.registry,
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
            "dyhead_ready", "1 once the model is loaded and warmed up.", registry=self.registry
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference_seconds.observe(seconds)

    def track_queue_depth(self, depth: Callable[[], float]) -> None:
        self.queue_depth.set_function(depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)


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
