"""Every failure as one JSON shape: ``{"error": {"code", "message"}}`` on our routes, and the
Open Inference Protocol's ``{"error": message}`` under ``/v2``.

A client that disconnects before its request has arrived is not a server error: it is logged on
one line and counted as status 499 (nginx's "client closed request"; nothing is sent). An
unexpected exception becomes our 500 JSON in :class:`UnexpectedErrorMiddleware`, which sits inside
the CORS middleware so that 500s carry the same CORS headers as every other answer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "ApiError",
    "UnexpectedErrorMiddleware",
    "error_response",
    "install_error_handlers",
    "is_v2_path",
]

logger = logging.getLogger(__name__)

# nginx's status for a request its client abandoned: recorded in the metrics, never sent.
CLIENT_CLOSED_REQUEST = 499

# The code a bare HTTP status gets when nothing more specific was said.
_CODE_FOR_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}


class ApiError(Exception):
    """A request we answer with an error status and a message saying what to change.

    Args:
        status: the HTTP status.
        code: a stable, machine-readable code (``invalid_image``, ``queue_full``, ...).
        message: what went wrong, for a person.
        headers: extra response headers (``Retry-After``, ``WWW-Authenticate``).
    """

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def is_v2_path(path: str) -> bool:
    """Open Inference Protocol routes answer errors in that protocol's form."""
    return path == "/v2" or path.startswith("/v2/")


def error_response(
    path: str, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The JSON error body for ``path``: ours, or the Open Inference Protocol's under /v2."""
    body: dict[str, object] = (
        {"error": message} if is_v2_path(path) else {"error": {"code": code, "message": message}}
    )
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query"))
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception to the JSON error shape; unexpected ones are logged with a traceback."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request.url.path, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODE_FOR_STATUS.get(exc.status_code, "error")
        return error_response(request.url.path, exc.status_code, code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request.url.path, 422, "invalid_request", _validation_message(exc))

    @app.exception_handler(ClientDisconnect)
    async def _client_disconnected(request: Request, exc: ClientDisconnect) -> Response:
        logger.info(
            "%s %s: the client disconnected before its request arrived", request.method, request.url.path
        )
        return Response(status_code=CLIENT_CLOSED_REQUEST)


class UnexpectedErrorMiddleware:
    """Any exception no handler took: logged with its traceback, answered 500 in our JSON shape.

    Installed inside the CORS middleware (Starlette's own 500 handler sits outside it, so its
    answers lacked the CORS headers the other errors carry).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_and_track(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_and_track)
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:  # too late for an error response: the connection is closed
                raise
            path = scope.get("path", "")
            await error_response(path, 500, "internal_error", "internal server error")(scope, receive, send)
