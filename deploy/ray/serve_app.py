"""dyhead-serve on Ray Serve: the same FastAPI app (and so the same REST API) as ``dyhead-serve
serve``, as autoscaled replicas across a Ray cluster.

Run from the repository root, on a Ray cluster whose nodes have dyhead-serve installed (the GPU
image, with ``pip install "ray[serve]"`` added, makes a good worker image)::

    serve run deploy.ray.serve_app:app_builder model=/models/atss-engine backend=tensorrt
    serve run deploy.ray.serve_app:app_builder num_gpus=0 device=cpu          # the embedded model

Arguments (``key=value``; all optional): ``model``, ``config``, ``weights``, ``backend``,
``device`` and every other server setting, as ``dyhead-serve serve`` takes them (with the
``DYHEAD_SERVE_*`` environment where the application is built, and the defaults, behind them);
``num_gpus`` per replica (default 1), ``min_replicas`` (1), ``max_replicas`` (4) and
``target_ongoing_requests`` per replica (default: the batch size). A TensorRT engine only runs on
the GPU and TensorRT it was built for: build it once per kind of GPU with ``dyhead-export engine``
onto storage the replicas share, with a profile that takes the server's batch size.

KServe v2 over gRPC is off in the replicas (``grpc_port`` 0 unless given): Ray Serve routes
requests through its own proxy, whose gRPC side calls Ray-specific servicer functions, and
several replicas on one node could not each listen on the same port. Clients of this deployment
speak the REST API (``/v1`` and ``/v2``); run ``dyhead-serve serve`` (Docker, compose, Kubernetes)
where gRPC is wanted.

Ray is imported only when the application is built, so this file imports (and is tested) where Ray
is not installed.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from dyhead_serve.server import create_app
from dyhead_serve.server.service import ServiceState, load_backend_from_settings
from dyhead_serve.server.settings import ServerSettings

__all__ = ["DEPLOYMENT_ARGS", "app_builder", "build_asgi_app", "deployment_options", "server_settings"]

# Arguments that configure the Ray deployment rather than the server.
DEPLOYMENT_ARGS = ("num_gpus", "min_replicas", "max_replicas", "target_ongoing_requests")


def server_settings(args: dict[str, Any]) -> ServerSettings:
    """The server settings named in ``args`` (the rest from ``DYHEAD_SERVE_*`` and defaults)."""
    values = {key: value for key, value in args.items() if key not in DEPLOYMENT_ARGS}
    values.setdefault("grpc_port", 0)  # see the module's docstring
    unknown = sorted(set(values) - set(ServerSettings.model_fields))
    if unknown:
        raise ValueError(
            f"unknown argument(s) {', '.join(unknown)}; server settings are "
            f"{', '.join(ServerSettings.model_fields)}, deployment options {', '.join(DEPLOYMENT_ARGS)}"
        )
    return ServerSettings(**values)


def build_asgi_app(settings: ServerSettings) -> FastAPI:
    """The app ``dyhead-serve serve`` runs, with its model loaded before it is returned.

    Ray sends requests to a replica as soon as its app exists, so the model is loaded here (on the
    replica) rather than in the background as the standalone server does; the app's lifespan then
    only warms it up.
    """
    return create_app(settings, backend=load_backend_from_settings(settings))


def deployment_options(args: dict[str, Any], settings: ServerSettings) -> dict[str, Any]:
    """``serve.deployment`` options: one GPU per replica and autoscaling on ongoing requests.

    A replica batches up to ``max_batch_size`` images per backend call, so it should be sent about
    that many requests at once, and may hold its whole admission queue.
    """
    target = float(args.get("target_ongoing_requests", settings.max_batch_size))
    return {
        "ray_actor_options": {"num_gpus": float(args.get("num_gpus", 1))},
        "max_ongoing_requests": settings.max_queue,
        "autoscaling_config": {
            "min_replicas": int(args.get("min_replicas", 1)),
            "max_replicas": int(args.get("max_replicas", 4)),
            "target_ongoing_requests": target,
            "upscale_delay_s": 30.0,
            # GPU replicas are slow to start: keep them a while after load falls.
            "downscale_delay_s": 600.0,
        },
        "health_check_period_s": 10.0,
    }


def app_builder(args: dict[str, Any]) -> Any:
    """The Ray Serve application (``serve run deploy.ray.serve_app:app_builder key=value ...``)."""
    from ray import serve  # type: ignore[import-not-found,unused-ignore]

    settings = server_settings(args)

    def asgi_app() -> FastAPI:  # evaluated on each replica
        return build_asgi_app(settings)

    class DyHeadServe:
        """One replica: the dyhead-serve app on its own backend and batcher."""

        def check_health(self) -> None:
            """Ray replaces a replica whose check raises: here, one whose model failed."""
            service = self.app.state.service  # type: ignore[attr-defined]  # serve.ingress adds .app
            if service.state is ServiceState.FAILED:
                raise RuntimeError(f"the model failed: {service.error}")

    replica = serve.ingress(asgi_app)(DyHeadServe)
    return serve.deployment(name="dyhead-serve", **deployment_options(args, settings))(replica).bind()
