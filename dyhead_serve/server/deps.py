"""Route dependencies: the service of this app, and the optional API key."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from dyhead_serve.server.errors import ApiError
from dyhead_serve.server.service import DetectionService
from dyhead_serve.server.settings import ServerSettings

__all__ = ["API_KEY_HEADER", "ApiKey", "Service", "Settings"]

API_KEY_HEADER = "X-API-Key"

_api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="needed only when the server was started with an API key (--api-key)",
)


def _service(request: Request) -> DetectionService:
    service: DetectionService = request.app.state.service
    return service


def _settings(request: Request) -> ServerSettings:
    settings: ServerSettings = request.app.state.settings
    return settings


def _check_api_key(
    settings: Annotated[ServerSettings, Depends(_settings)],
    given: Annotated[str | None, Security(_api_key_scheme)] = None,
) -> None:
    if settings.api_key is None:
        return
    # Keys are printable ASCII (settings refuse others); header values arrive as latin-1 text.
    expected = settings.api_key.get_secret_value().encode("ascii")
    if given is None or not secrets.compare_digest(given.encode("latin-1", "replace"), expected):
        raise ApiError(
            401,
            "unauthorized",
            f"missing or wrong {API_KEY_HEADER} header",
            {"WWW-Authenticate": API_KEY_HEADER},
        )


Service = Annotated[DetectionService, Depends(_service)]
Settings = Annotated[ServerSettings, Depends(_settings)]
ApiKey = Depends(_check_api_key)
