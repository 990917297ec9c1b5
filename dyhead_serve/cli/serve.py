"""``dyhead-serve serve``: its flags (beside the model flags predict has too) and how it starts uvicorn.

Importing this module is cheap: FastAPI and uvicorn load only when the command runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
import threading

__all__ = ["SERVE_EPILOG", "add_serve_arguments", "run_serve"]

logger = logging.getLogger(__name__)

SERVE_EPILOG = """\
examples:
  dyhead-serve serve                                        # the embedded default model, ONNX Runtime on CPU
  dyhead-serve serve --model exported/atss --port 8080      # a `dyhead-export onnx` folder
  dyhead-serve serve --model dyhead_r50_atss_fpn_1x --device cuda --max-batch-size 16
  DYHEAD_SERVE_API_KEY=secret dyhead-serve serve --host 0.0.0.0 --cors-origins https://app.example.com

Every flag can also be set as an environment variable DYHEAD_SERVE_<FLAG> (e.g.
DYHEAD_SERVE_MAX_BATCH_SIZE=16); flags win. Then open http://HOST:PORT/ (demo page) or /docs.
"""

# Flag destinations that are ServerSettings fields of the same name.
_SETTINGS_FLAGS = (
    "model", "config", "weights", "backend", "device", "threads", "host", "port", "workers",
    "max_batch_size", "max_batch_delay_ms", "max_queue", "preprocess_workers", "request_timeout_s",
    "read_timeout_s", "header_timeout_s", "max_connections", "max_upload_mb", "max_files", "max_image_pixels",
    "max_request_pixels", "api_key", "cors_origins", "warmup",
)  # fmt: skip


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The server's flags. Unset flags are None, so that the environment and defaults apply."""
    p.set_defaults(backend=None, device=None, threads=None)  # the model flags, too, defer to settings
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default 8000)")
    p.add_argument(
        "--workers", type=int, default=None, help="server processes, each with its own model copy (default 1)"
    )
    p.add_argument(
        "--max-batch-size", type=int, default=None, help="images per backend call (default 8; 1: no batching)"
    )
    p.add_argument(
        "--max-batch-delay-ms",
        type=float,
        default=None,
        help="longest wait for a batch to fill after its first image (default 10)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=None,
        help="images accepted and not yet answered; beyond it 503 with Retry-After (default 64)",
    )
    p.add_argument(
        "--preprocess-workers",
        type=int,
        default=None,
        help="threads decoding and resizing images (default 2)",
    )
    p.add_argument(
        "--request-timeout-s",
        type=float,
        default=None,
        help="answer 504 after this many seconds (default 30)",
    )
    p.add_argument(
        "--read-timeout-s",
        type=float,
        default=None,
        help="time to receive a whole request (headers and body) from its first byte; 408 after (default 60)",
    )
    p.add_argument(
        "--header-timeout-s",
        type=float,
        default=None,
        help="time to receive a request's line and headers, at most --read-timeout-s; 408 after (default 10)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="open connections per worker; more get 503 and are closed (default 256)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=None,
        help="largest request body in MiB, 413 beyond (default 20)",
    )
    p.add_argument("--max-files", type=int, default=None, help="most images per request (default 16)")
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=None,
        help="larger images are refused before decoding, 413 (default 50000000)",
    )
    p.add_argument(
        "--max-request-pixels",
        type=int,
        default=None,
        help="most pixels of all images of one request together, 413 beyond (default 100000000)",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="require this X-API-Key header on /v1 and /v2 model routes (prefer DYHEAD_SERVE_API_KEY: "
        "command lines are visible to other users)",
    )
    p.add_argument(
        "--cors-origins", default=None, help="comma-separated origins allowed to call the API from a browser"
    )
    p.add_argument(
        "--no-warmup", dest="warmup", action="store_false", default=None, help="report ready without warm-up"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _exit_cleanly_after_sigterm() -> None:
    """uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the previous
    handler; with this one the process then exits 0 (a completed, orderly shutdown)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: logger.info("stopped by SIGTERM"))


def run_serve(args: argparse.Namespace) -> int:
    """Start the server; returns when it has shut down (0), or 2 when the model cannot be served."""
    import uvicorn
    from pydantic import ValidationError

    from dyhead_serve.model_args import overrides_from_args
    from dyhead_serve.model_source import ModelSourceError, resolve_model
    from dyhead_serve.server.app import create_app
    from dyhead_serve.server.connections import uvicorn_options
    from dyhead_serve.server.settings import ServerSettings
    from dyhead_serve.zoo import ZooError

    values = {name: getattr(args, name) for name in _SETTINGS_FLAGS if getattr(args, name, None) is not None}
    if overrides_from_args(args):
        values["overrides"] = overrides_from_args(args)
    try:
        settings = ServerSettings(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        print(f"error: invalid server settings: {problems}", file=sys.stderr)
        return 2
    try:  # the model arguments, before anything starts (weights load in the server's lifespan)
        resolve_model(
            settings.model,
            config=settings.config,
            weights=settings.weights,
            overrides=settings.overrides,
            download=False,
        )
    except (ModelSourceError, ZooError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.model is None and settings.config is None:
        from dyhead_serve.zoo import demo_model_notice

        logger.info(
            "no model named: %s", demo_model_notice("dyhead-serve serve --model dyhead_r50_atss_fpn_1x")
        )
    if not _is_loopback(settings.host):
        logger.warning(
            "listening on %s: reachable from other machines%s",
            settings.host, "" if settings.api_key else " without an API key",
        )  # fmt: skip
    server_options = uvicorn_options(settings)
    _exit_cleanly_after_sigterm()
    if settings.workers > 1:
        # Each worker process builds its own app (and model) from the environment.
        from dyhead_serve.server.app import LOG_LEVEL_VARIABLE

        os.environ.update(settings.to_environment())
        os.environ[LOG_LEVEL_VARIABLE] = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        uvicorn.run(
            "dyhead_serve.server.app:create_app_from_environment",
            factory=True,
            workers=settings.workers,
            **server_options,
        )
        return 0

    failures: list[BaseException] = []
    server: uvicorn.Server | None = None

    def stop_on_failure(exc: BaseException) -> None:
        failures.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_load_failure=stop_on_failure)
    server = uvicorn.Server(uvicorn.Config(app, **server_options))
    server.run()
    if failures:
        print(f"error: cannot serve the model: {str(failures[0]).strip()}", file=sys.stderr)
        return 2
    return 0
