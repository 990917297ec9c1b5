"""The REST server: FastAPI app factory, lifespan, routes, dynamic batching, metrics, settings.

Importing this package loads no model; :func:`create_app` builds an app whose lifespan does.
FastAPI and the app load on first use of ``create_app``: the command line reads
:mod:`dyhead_serve.server.settings` (to generate ``serve``'s flags) without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dyhead_serve.server.app import create_app, create_app_from_environment
    from dyhead_serve.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app", "create_app_from_environment"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "create_app_from_environment"):
        from dyhead_serve.server import app

        return getattr(app, name)
    if name == "ServerSettings":
        from dyhead_serve.server.settings import ServerSettings

        return ServerSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
