"""OpenAPI pieces FastAPI cannot infer: request bodies that routes read themselves (multipart or
JSON on one route, the v2 binary extension) and the error responses of each route."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from dyhead_serve.server.schemas import DetectJsonRequest, ErrorResponse

__all__ = ["detect_request_body", "error_responses", "install_openapi"]

_ERROR_DESCRIPTIONS = {
    400: "not an image, truncated or corrupt, invalid base64 or JSON, malformed multipart",
    401: "missing or wrong X-API-Key (only when the server has an API key)",
    404: "no such model",
    413: "body over max_upload_mb, more than max_files images, or an image over max_image_pixels",
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
