"""Operations: liveness, readiness, Prometheus metrics and the demo page."""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from dyhead_serve.server.deps import Service
from dyhead_serve.server.schemas import HealthResponse
from dyhead_serve.server.service import ServiceState

__all__ = ["router"]

router = APIRouter(tags=["operations"])

# The demo page runs its own inline script and shows uploaded images as blob: URLs; nothing else.
_DEMO_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@router.get(
    "/healthz",
    summary="Liveness: the process answers (503 only when the model failed to load)",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "the model could not be loaded"}},
)
async def healthz(service: Service) -> JSONResponse:
    if service.state is ServiceState.FAILED:
        return JSONResponse({"status": "failed", "detail": service.error}, status_code=503)
    return JSONResponse({"status": "alive", "detail": None})


@router.get(
    "/readyz",
    summary="Readiness: 200 once the model is loaded and warmed up",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "loading, failed or shutting down"}},
)
async def readyz(service: Service) -> JSONResponse:
    status = 200 if service.ready else 503
    return JSONResponse({"status": service.state.value, "detail": service.error}, status_code=status)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}, "description": "text format"}},
)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@cache
def _demo_page() -> str:
    return resources.files("dyhead_serve.server").joinpath("static/demo.html").read_text(encoding="utf-8")


@router.get("/", summary="Demo page", response_class=HTMLResponse, include_in_schema=True)
async def demo_page() -> HTMLResponse:
    return HTMLResponse(
        _demo_page(), headers={"Content-Security-Policy": _DEMO_CSP, "X-Content-Type-Options": "nosniff"}
    )
