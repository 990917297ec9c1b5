"""OpenAPI pieces FastAPI cannot infer: request bodies that routes read themselves (multipart or
JSON on one route, the v2 binary extension) and the error responses of each route; and the pages
that show the document (``/docs``: Swagger UI, ``/redoc``: ReDoc), served with their scripts from
an installed package (``fastapi-offline``, a PyPI distribution of Swagger UI and ReDoc), so they
work without internet access (FastAPI's own pages load them from a CDN)."""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from dyhead_serve.server.schemas import DetectJsonRequest, ErrorResponse

__all__ = ["DOCS_ASSETS", "detect_request_body", "error_responses", "install_docs", "install_openapi"]

DOCS_ASSETS = "/docs-assets"  # where Swagger UI's and ReDoc's scripts are served

_ERROR_DESCRIPTIONS = {
    400: "not an image, truncated or corrupt, invalid base64 or JSON, malformed multipart",
    401: "missing or wrong X-API-Key (only when the server has an API key)",
    404: "no such model",
    408: "the request did not arrive within read_timeout_s",
    413: (
        "body over max_upload_mb, more than max_files images, an image over max_image_pixels, images "
        "over max_request_pixels together, or a JSON body of more than 10 000 values"
    ),
    415: "unsupported media type",
    422: "invalid options, or a body of the wrong shape",
    503: "not ready yet, shutting down, or the queue is full (see Retry-After)",
    504: "no answer within request_timeout_s",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for the error statuses a route can answer."""
    return {
        status: {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS[status]} for status in statuses
    }


def _multipart_schema(single: bool) -> dict[str, Any]:
    binary = {"type": "string", "format": "binary"}
    properties: dict[str, Any] = {"file": {**binary, "description": "one image (JPEG, PNG, ...)"}}
    required: dict[str, Any] = {"required": ["file"]}
    if not single:
        properties["files"] = {
            "type": "array",
            "items": binary,
            "minItems": 1,
            "description": "several images (repeat the field); may be combined with `file`",
        }
        required = {"anyOf": [{"required": ["file"]}, {"required": ["files"]}]}
    properties.update(
        {
            "score_threshold": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
            "max_detections": {"type": "integer", "minimum": 1, "maximum": 10000},
            "classes": {
                "type": "array",
                "items": {"type": "string"},
                "description": "class names or ids to keep (repeat the field, or separate by commas)",
            },
        }
    )
    return {"type": "object", "properties": properties, **required}


def detect_request_body(*, single: bool = False) -> dict[str, Any]:
    """``openapi_extra`` of a detection route: multipart upload, or JSON with base64 images."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": _multipart_schema(single)},
                "application/json": {"schema": {"$ref": "#/components/schemas/DetectJsonRequest"}},
            },
        }
    }


def _add_component(schemas: dict[str, Any], model: type[BaseModel]) -> None:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in schema.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    schemas.setdefault(model.__name__, schema)


def install_openapi(app: FastAPI, extra_models: tuple[type[BaseModel], ...] = ()) -> None:
    """Generate the OpenAPI document once, with the schemas of bodies that routes parse themselves."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            models: list[type[BaseModel]] = [DetectJsonRequest, *extra_models]
            for model in models:
                _add_component(schemas, model)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) with their assets served from the installed
    ``fastapi_offline`` package. The app must be created with ``docs_url=None, redoc_url=None``."""
    assets = resources.files("fastapi_offline").joinpath("static")
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")
    title = app.title

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},  # no call to the online validator
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{title} - ReDoc",
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )
