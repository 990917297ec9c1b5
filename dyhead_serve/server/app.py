"""The FastAPI application: middleware, routes, and a lifespan that loads the model, warms it up,
and only then reports ready; on shutdown it finishes the queued work before the threads stop."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from dyhead_serve import __version__
from dyhead_serve.runtime.base import Backend
from dyhead_serve.server.connections import (
    CONNECTION_EVENTS,
    CONNECTION_LIMITS,
    ConnectionLimits,
    ReadDeadlineMiddleware,
)
from dyhead_serve.server.deps import API_KEY_HEADER
from dyhead_serve.server.errors import UnexpectedErrorMiddleware, install_error_handlers
from dyhead_serve.server.metrics import Metrics, MetricsMiddleware
from dyhead_serve.server.openapi_docs import install_docs, install_openapi
from dyhead_serve.server.routes_ops import router as ops_router
from dyhead_serve.server.routes_v1 import router as v1_router
from dyhead_serve.server.routes_v2 import model_router as v2_model_router
from dyhead_serve.server.routes_v2 import router as v2_router
from dyhead_serve.server.service import BackendLoader, DetectionService, load_backend_from_settings
from dyhead_serve.server.settings import ServerSettings
from dyhead_serve.server.uploads import BodySizeLimitMiddleware
from dyhead_serve.server.v2_schemas import V2InferRequest

__all__ = ["LOG_LEVEL_VARIABLE", "create_app", "create_app_from_environment"]

logger = logging.getLogger(__name__)

DESCRIPTION = """\
DyHead object detection over HTTP.

- `POST /v1/detect`: upload images (multipart `file` / `files`, or JSON base64 `images`), get
  boxes in original pixels, scores, class ids and labels.
- `POST /v1/detect/annotated`: the image with its boxes drawn (JPEG or PNG).
- `/v2/...`: the Open Inference Protocol (KServe / Triton clients); the same protocol over gRPC
  on `grpc_port` (default 8001).
- `/healthz`, `/readyz`, `/metrics`: for orchestrators and Prometheus. `/`: a demo page.

Requests from many clients are batched together (images of the same padded size only, so
batching never changes detections). Errors are `{"error": {"code", "message"}}`
(`{"error": message}` under `/v2`).
"""


def create_app(
    settings: ServerSettings | None = None,
    *,
    load: BackendLoader | None = None,
    backend: Backend | None = None,
    on_load_failure: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """Build the application; nothing is loaded until its lifespan starts.

    Args:
        settings: default: read from ``DYHEAD_SERVE_*`` environment variables.
        load: how to get the backend (default: the runtime loader on the settings' model).
        backend: an already loaded backend to serve instead.
        on_load_failure: called when loading or warm-up fails, or the gRPC port cannot be bound
            (the CLI stops the server).
    """
    settings = settings if settings is not None else ServerSettings()
    metrics = Metrics()
    if backend is not None:
        preloaded = backend

        def load(_: ServerSettings) -> Backend:
            return preloaded

    service = DetectionService(settings, metrics, load or load_backend_from_settings, on_load_failure)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        service.start()  # loads and warms up on its own thread: /healthz answers meanwhile
        grpc_server = None
        if settings.grpc_port:
            from dyhead_serve.server.grpc.server import start_grpc_server

            try:
                grpc_server = await start_grpc_server(settings, service, metrics)
            except RuntimeError as exc:  # the port cannot be bound
                if on_load_failure is None:
                    service.stop(timeout=settings.request_timeout_s)
                    raise
                # As for a model that cannot load: the CLI reports it in one line, exits 2.
                on_load_failure(exc)
        app.state.grpc_server = grpc_server
        # The lifespan state reaches the connection protocol: its limits, and where it counts the
        # connections it closes itself.
        yield {
            CONNECTION_LIMITS: ConnectionLimits(
                settings.read_timeout_s, settings.max_connections, settings.header_timeout_s
            ),
            CONNECTION_EVENTS: lambda reason: metrics.connections_closed.labels(reason).inc(),
        }
        logger.info("shutting down: finishing queued work")
        if grpc_server is not None:
            await grpc_server.stop(grace_s=settings.request_timeout_s)
        service.stop(timeout=settings.request_timeout_s)

    app = FastAPI(
        title="dyhead-serve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served from the installed package instead of a CDN: install_docs
        redoc_url=None,
        openapi_tags=[
            {"name": "detection", "description": "detect objects in images"},
            {"name": "open inference protocol v2", "description": "KServe / Triton compatible"},
            {"name": "operations", "description": "health, readiness, metrics, demo page"},
        ],
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.service = service
    install_error_handlers(app)
    for router in (ops_router, v1_router, v2_router, v2_model_router):
        app.include_router(router)
    install_openapi(app, extra_models=(V2InferRequest,))
    install_docs(app)
    # Added last = outermost: metrics see every response, the 413s of the size limit included,
    # and CORS headers go on every answer, 500s included.
    app.add_middleware(ReadDeadlineMiddleware, read_timeout_s=settings.read_timeout_s)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(UnexpectedErrorMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", API_KEY_HEADER, "Inference-Header-Content-Length"],
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


LOG_LEVEL_VARIABLE = "DYHEAD_SERVE_LOG_LEVEL"


def create_app_from_environment() -> FastAPI:
    """The app with settings from ``DYHEAD_SERVE_*`` (uvicorn ``--factory``, one per worker).

    A worker process starts with no logging set up: it logs at ``$DYHEAD_SERVE_LOG_LEVEL``
    (default INFO), as the CLI process does.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=os.environ.get(LOG_LEVEL_VARIABLE, "INFO").upper(),
            format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
            stream=sys.stderr,
        )
    return create_app(ServerSettings())
