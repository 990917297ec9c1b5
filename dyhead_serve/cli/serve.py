"""``dyhead-serve serve``: its flags (beside the model flags predict has too), generated from the
server's settings, and how it starts uvicorn.

Importing this module is cheap: FastAPI and uvicorn load only when the command runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import logging
import os
import shutil
import signal
import tempfile
import threading
from typing import TYPE_CHECKING, Any, get_args

from dyhead_serve.cli.model_options import add_model_arguments, add_runtime_arguments, overrides_from_args
from dyhead_serve.errors import UserError

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "SERVE_EPILOG",
    "add_serve_flags",
    "add_serve_parser",
    "describe_validation_error",
    "run_serve",
    "settings_values",
]

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

# Settings given by the model flags predict shares (their help is there); ``overrides`` is --set.
_MODEL_FIELDS = ("model", "config", "weights", "backend", "device", "threads", "overrides")


def _flag_type(annotation: Any) -> type:
    """int or float for a numeric field, else str (pydantic's validators parse the rest: lists,
    secrets)."""
    for kind in (bool, int, float):
        if annotation is kind or kind in get_args(annotation):
            return kind
    return str


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_serve_flags(p: argparse.ArgumentParser) -> None:
    """One flag per server setting (beyond the model's), generated from
    :class:`~dyhead_serve.server.settings.ServerSettings`: ``--max-batch-size`` for
    ``max_batch_size``, its description and default as help, ``--no-warmup`` for a setting that is
    on by default. Unset flags are None, so that the environment and the defaults apply."""
    from dyhead_serve.server.settings import ServerSettings

    for name, field in ServerSettings.model_fields.items():
        if name in _MODEL_FIELDS:
            continue
        flag = "--" + name.replace("_", "-")
        kind = _flag_type(field.annotation)
        description = field.description
        if not description:
            raise TypeError(f"ServerSettings.{name} has no description: its flag would have no help")
        if kind is bool:
            if field.default is not True:
                raise TypeError(f"ServerSettings.{name}: a flag is generated only for settings on by default")
            p.add_argument(
                f"--no-{name.replace('_', '-')}",
                dest=name,
                action="store_false",
                default=None,
                help=f"turn off: {description}",
            )
            continue
        value = field.get_default(call_default_factory=True)
        default = f" (default {_shown(value)})" if value not in (None, []) else ""
        p.add_argument(flag, dest=name, type=kind, default=None, help=f"{description}{default}")


def settings_values(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line: every flag that was set, with the overrides."""
    from dyhead_serve.server.settings import ServerSettings

    values = {
        name: getattr(args, name)
        for name in ServerSettings.model_fields
        if name != "overrides" and getattr(args, name, None) is not None
    }
    if overrides_from_args(args):
        values["overrides"] = overrides_from_args(args)
    return values


def add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` subcommand: the model flags predict has too, then the server's."""
    p = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP (REST API, Open Inference Protocol v2, demo page)",
        description="Serve a detector over HTTP with dynamic batching: POST /v1/detect, "
        "/v1/detect/annotated, /v2 (KServe/Triton), /healthz, /readyz, /metrics, a demo page at / "
        "and the API docs at /docs. With no model named, the embedded default on CPU.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=SERVE_EPILOG,
    )
    add_model_arguments(p, exported=True, default=True)
    add_runtime_arguments(p, defaults=False)  # unset: the settings decide
    if importlib.util.find_spec("pydantic_settings") is None:
        p.set_defaults(func=_missing_serve_extra)
        return
    add_serve_flags(p)
    p.set_defaults(func=run_serve)


def _missing_serve_extra(args: argparse.Namespace) -> int:
    from dyhead_serve.pipeline.preprocess import MissingExtraError

    raise MissingExtraError(
        "`dyhead-serve serve` needs the server's packages: pip install 'dyhead-serve[serve]'"
    )


def describe_validation_error(exc: ValidationError) -> str:
    """The problems of invalid settings on one line: ``field: message; ...`` (never the values)."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


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


def _shut_down_gracefully_on_sighup(server: Any) -> None:
    """SIGHUP (the terminal closed, a supervisor's hang-up) shuts the server down as SIGTERM does:
    requests in flight are answered first. Its default action killed the process at once. (With
    ``--workers``, uvicorn's supervisor handles SIGHUP itself: it restarts the workers, each
    draining as on SIGTERM.)"""

    def hang_up(signum: int, frame: Any) -> None:
        logger.info("SIGHUP: shutting down gracefully, as on SIGTERM")
        server.should_exit = True

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, hang_up)


def run_serve(args: argparse.Namespace) -> int:
    """Start the server; returns when it has shut down (0).

    Raises:
        UserError: invalid settings, a model that cannot be named or loaded.
    """
    import uvicorn
    from pydantic import ValidationError

    from dyhead_serve.model_source import resolve_model
    from dyhead_serve.server.app import create_app
    from dyhead_serve.server.connections import uvicorn_options
    from dyhead_serve.server.settings import ServerSettings

    try:
        settings = ServerSettings(**settings_values(args))
    except ValidationError as exc:
        raise UserError(f"invalid server settings: {describe_validation_error(exc)}") from None
    # The model arguments, before anything starts (weights load in the server's lifespan).
    resolve_model(
        settings.model,
        config=settings.config,
        weights=settings.weights,
        overrides=settings.overrides,
        download=False,
    )
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
        from dyhead_serve.server.metrics import MULTIPROCESS_VARIABLE

        os.environ.update(settings.to_environment())
        os.environ[LOG_LEVEL_VARIABLE] = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        # The workers' metrics in shared files, so /metrics counts every worker's requests.
        own_metrics_dir = not os.environ.get(MULTIPROCESS_VARIABLE)
        if own_metrics_dir:
            os.environ[MULTIPROCESS_VARIABLE] = tempfile.mkdtemp(prefix="dyhead-serve-metrics-")
        try:
            uvicorn.run(
                "dyhead_serve.server.app:create_app_from_environment",
                factory=True,
                workers=settings.workers,
                **server_options,
            )
        finally:
            if own_metrics_dir:
                shutil.rmtree(os.environ.pop(MULTIPROCESS_VARIABLE), ignore_errors=True)
        return 0

    failures: list[BaseException] = []
    server: uvicorn.Server | None = None

    def stop_on_failure(exc: BaseException) -> None:
        failures.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_load_failure=stop_on_failure)
    server = uvicorn.Server(uvicorn.Config(app, **server_options))
    _shut_down_gracefully_on_sighup(server)
    server.run()
    if failures:
        raise UserError(f"cannot serve the model: {str(failures[0]).strip()}") from failures[0]
    return 0
