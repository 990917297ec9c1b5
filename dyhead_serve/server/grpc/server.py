"""The gRPC server beside the HTTP one: same process, same event loop, same service.

It serves ``inference.GRPCInferenceService`` (the Open Inference Protocol v2 over gRPC, as KServe
and Triton define it) and the standard health-checking service (``grpc.health.v1.Health``,
SERVING once the model is ready). The app's lifespan starts it, and on shutdown (after uvicorn has
finished the HTTP requests) stops it before the service: health turns NOT_SERVING, new calls are
refused, calls in progress get up to ``request_timeout_s`` to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dyhead_serve.server.errors import ApiError
from dyhead_serve.server.grpc import open_inference_pb2 as pb
from dyhead_serve.server.grpc.servicer import InferenceServicer, grpc_code
from dyhead_serve.server.metrics import Metrics
from dyhead_serve.server.service import DetectionService
from dyhead_serve.server.settings import ServerSettings

__all__ = ["SERVICE_NAME", "GrpcServer", "start_grpc_server"]

logger = logging.getLogger(__name__)

# The service's full name on the wire: the methods are /inference.GRPCInferenceService/<Call>.
SERVICE_NAME = "inference.GRPCInferenceService"
# How often the health service's status follows the model's readiness (Check reads it at once).
_HEALTH_POLL_S = 0.5


@dataclass(frozen=True)
class _Method:
    request: Any  # the request message class
    response: Any  # the response message class
    handler: Callable[[InferenceServicer], Callable[[Any], Awaitable[Any]]]
    needs_key: bool


# As on HTTP: server-level probes and metadata are open, model calls need the API key.
_METHODS = {
    "ServerLive": _Method(pb.ServerLiveRequest, pb.ServerLiveResponse, lambda s: s.server_live, False),
    "ServerReady": _Method(pb.ServerReadyRequest, pb.ServerReadyResponse, lambda s: s.server_ready, False),
    "ServerMetadata": _Method(
        pb.ServerMetadataRequest, pb.ServerMetadataResponse, lambda s: s.server_metadata, False
    ),
    "ModelReady": _Method(pb.ModelReadyRequest, pb.ModelReadyResponse, lambda s: s.model_ready, True),
    "ModelMetadata": _Method(
        pb.ModelMetadataRequest, pb.ModelMetadataResponse, lambda s: s.model_metadata, True
    ),
    "ModelConfig": _Method(pb.ModelConfigRequest, pb.ModelConfigResponse, lambda s: s.model_config, True),
    "RepositoryIndex": _Method(
        pb.RepositoryIndexRequest, pb.RepositoryIndexResponse, lambda s: s.repository_index, True
    ),
    "ModelInfer": _Method(pb.ModelInferRequest, pb.ModelInferResponse, lambda s: s.model_infer, True),
}


def _unary_handler(
    name: str, method: _Method, servicer: InferenceServicer, metrics: Metrics
) -> grpc.RpcMethodHandler:
    call = method.handler(servicer)

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            if method.needs_key:
                servicer.check_api_key(dict(context.invocation_metadata() or ()))
            return await call(request)
        except ApiError as exc:
            code = grpc_code(exc)
            if "Retry-After" in exc.headers:
                context.set_trailing_metadata((("retry-after", exc.headers["Retry-After"]),))
            await context.abort(code, exc.message)
        except asyncio.CancelledError:  # the client went away, or its deadline passed
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            logger.exception("unhandled error in gRPC %s", name)
            await context.abort(code, "internal server error")
        finally:
            metrics.grpc_requests.labels(name, code.name).inc()
            metrics.grpc_latency.labels(name).observe(time.perf_counter() - started)

    return grpc.unary_unary_rpc_method_handler(
        handle,
        request_deserializer=method.request.FromString,
        response_serializer=method.response.SerializeToString,
    )


class _ReadinessHealth(health.aio.HealthServicer):
    """The health service, SERVING exactly when the model is ready (for the whole server and for
    the inference service by name)."""

    def __init__(self, service: DetectionService) -> None:
        super().__init__()
        self._service = service

    async def refresh(self) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self._service.ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self.set(name, status)

    async def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 (the service's name)
        await self.refresh()
        return await super().Check(request, context)


class GrpcServer:
    """A started gRPC server; :meth:`stop` shuts it down gracefully."""

    def __init__(self, server: grpc.aio.Server, health_servicer: _ReadinessHealth, port: int) -> None:
        self.server = server
        self.port = port
        self._health = health_servicer
        self._poll = asyncio.get_running_loop().create_task(self._follow_readiness())

    async def _follow_readiness(self) -> None:
        while True:
            await self._health.refresh()
            await asyncio.sleep(_HEALTH_POLL_S)

    async def stop(self, grace_s: float) -> None:
        """NOT_SERVING, refuse new calls, give calls in progress ``grace_s`` to finish."""
        self._poll.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._poll
        await self._health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        logger.info("gRPC server stopped")


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def start_grpc_server(
    settings: ServerSettings, service: DetectionService, metrics: Metrics
) -> GrpcServer:
    """Serve KServe v2 gRPC on ``settings.host:settings.grpc_port`` (call from the event loop).

    Raises:
        RuntimeError: the port cannot be bound (in use, or not allowed).
    """
    limit = settings.grpc_max_message_bytes
    options = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        # Several worker processes share the port (the kernel spreads the connections); one
        # process alone must fail loudly when the port is taken, not share it unknowingly.
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
    ]
    server = grpc.aio.server(options=options)
    servicer = InferenceServicer(service, settings)
    handlers = {name: _unary_handler(name, method, servicer, metrics) for name, method in _METHODS.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    health_servicer = _ReadinessHealth(service)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = _address(settings.host, settings.grpc_port)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot serve gRPC on {address}: {exc}") from exc
    if port == 0:  # older grpcio reports a failed bind this way
        raise RuntimeError(f"cannot serve gRPC on {address}: the port cannot be bound")
    await server.start()
    logger.info("KServe v2 gRPC on %s (%s)", address, SERVICE_NAME)
    return GrpcServer(server, health_servicer, port)
