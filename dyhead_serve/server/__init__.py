"""The REST server: FastAPI app factory, lifespan, routes, dynamic batching, metrics, settings.

Importing this package loads no model; :func:`create_app` builds an app whose lifespan does.
"""

from dyhead_serve.server.app import create_app, create_app_from_environment
from dyhead_serve.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app", "create_app_from_environment"]
