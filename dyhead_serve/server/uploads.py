"""Reading images out of requests, with every limit enforced while reading.

- :class:`BodySizeLimitMiddleware` refuses a body over the limit from its ``Content-Length``
  before reading it, and stops a body without one (chunked) as soon as it passes the limit.
- :func:`read_detect_request` takes ``multipart/form-data`` (``file`` / ``files`` and option
  fields) or ``application/json`` (base64 ``images`` and options).

Nothing that costs more than moving bytes runs on the event loop: a JSON body is first counted
(:func:`check_json_structure`, one pass in C over the bytes, refusing a body that could hold more
than ``MAX_JSON_SEPARATORS`` values), then parsed, validated and base64-decoded on a worker
thread, so that one request with a million elements cannot hold every other client waiting.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dyhead_serve.server.errors import ApiError, error_response
from dyhead_serve.server.schemas import DetectJsonRequest

__all__ = [
    "MAX_JSON_SEPARATORS",
    "BodySizeLimitMiddleware",
    "EncodedImage",
    "check_json_structure",
    "decode_base64_image",
    "media_type",
    "read_detect_request",
]

# A detection request is at most max_files images and a few options: tens of JSON values, a few
# hundred with a long class list. Parsing 10 000 values takes milliseconds; a million, seconds.
MAX_JSON_SEPARATORS = 10_000

_IMAGE_FIELDS = ("file", "files")
_OPTION_FIELDS = ("score_threshold", "max_detections")
# Part content types taken as "some file": browsers and curl send image/*; others send these.
_GENERIC_TYPES = ("", "application/octet-stream", "binary/octet-stream")


@dataclass
class EncodedImage:
    """An uploaded image file as received: its name (if any) and its bytes."""

    name: str | None
    data: bytes


class BodyTooLargeError(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            "payload_too_large",
            f"the request body is larger than {limit / 2**20:.1f} MiB (max_upload_mb)",
        )


class BodySizeLimitMiddleware:
    """Refuse request bodies larger than ``max_bytes`` with 413, without buffering them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        # bytes.isdigit is ASCII-only; a length of more digits than any limit is over it unparsed.
        if (
            declared is not None
            and declared.isdigit()
            and (len(declared) > 15 or int(declared) > self.max_bytes)
        ):
            error = BodyTooLargeError(self.max_bytes)
            response = error_response(scope.get("path", ""), error.status, error.code, error.message)
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


def media_type(request: Request) -> str:
    """The request's media type, lower case, without parameters."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def check_json_structure(body: bytes) -> None:
    """Refuse, before parsing it, a JSON body that may hold more than ``MAX_JSON_SEPARATORS`` values.

    Every JSON value after the first is preceded by a ``,``, ``[`` or ``{`` (or is the value of
    a key, which is preceded by one), so their count bounds the number of values; those
    characters inside strings only make the bound looser (base64 has none).

    Raises:
        ApiError: 413 ``too_many_json_values``.
    """
    separators = body.count(b",") + body.count(b"[") + body.count(b"{")
    if separators > MAX_JSON_SEPARATORS:
        raise ApiError(
            413, "too_many_json_values",
            f"the JSON body has {separators} separators (',', '[', '{{'); a request holds at most "
            f"{MAX_JSON_SEPARATORS}: a few images and options",
        )  # fmt: skip


def decode_base64_image(text: str, where: str) -> bytes:
    """Bytes of a base64 string, with or without a ``data:image/...;base64,`` prefix."""
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_base64", f"{where}: not valid base64") from None


async def _read_multipart(request: Request, max_files: int) -> tuple[list[EncodedImage], dict[str, Any]]:
    try:
        form = await request.form(max_files=max_files, max_fields=32)
    except StarletteHTTPException as exc:
        if "Too many files" in str(exc.detail):
            raise ApiError(413, "too_many_files", f"send at most {max_files} images per request") from None
        raise ApiError(400, "invalid_multipart", f"malformed multipart body: {exc.detail}") from None
    try:
        images: list[EncodedImage] = []
        options: dict[str, Any] = {}
        for key, value in form.multi_items():
            if key in _IMAGE_FIELDS:
                if not isinstance(value, UploadFile):
                    raise ApiError(422, "invalid_request", f"`{key}` must be a file upload, not a text field")
                part_type = (value.content_type or "").split(";", 1)[0].strip().lower()
                if not (part_type.startswith("image/") or part_type in _GENERIC_TYPES):
                    raise ApiError(
                        415, "unsupported_media_type",
                        f"{value.filename or key}: {part_type} is not an image type; send image/* files",
                    )  # fmt: skip
                images.append(EncodedImage(value.filename or None, await value.read()))
            elif key in (*_OPTION_FIELDS, "classes"):
                if not isinstance(value, str):
                    raise ApiError(422, "invalid_option", f"`{key}` must be a text field, not a file")
                if key == "classes":
                    options.setdefault("classes", []).append(value)
                else:
                    options[key] = value
            else:
                raise ApiError(
                    422, "invalid_request",
                    f"unknown form field `{key}`; use file, files, score_threshold, max_detections, classes",
                )  # fmt: skip
    finally:
        await form.close()
    return images, options


def _parse_json(body: bytes, max_files: int) -> tuple[list[EncodedImage], dict[str, Any]]:
    """Validate a JSON detection request and decode its images (on a worker thread)."""
    try:
        payload = DetectJsonRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors()
        if errors and errors[0]["type"] == "json_invalid":
            raise ApiError(400, "invalid_json", f"the body is not valid JSON: {errors[0]['msg']}") from None
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
        raise ApiError(422, "invalid_request", details) from None
    if len(payload.images) > max_files:
        raise ApiError(413, "too_many_files", f"send at most {max_files} images per request")
    images = [
        EncodedImage(item.name, decode_base64_image(item.data, item.name or f"images[{index}]"))
        for index, item in enumerate(payload.images)
    ]
    options = payload.model_dump(include={"score_threshold", "max_detections", "classes"}, exclude_none=True)
    return images, options


async def _read_json(request: Request, max_files: int) -> tuple[list[EncodedImage], dict[str, Any]]:
    body = await request.body()
    check_json_structure(body)
    return await anyio.to_thread.run_sync(_parse_json, body, max_files)


async def read_detect_request(request: Request, max_files: int) -> tuple[list[EncodedImage], dict[str, Any]]:
    """The images and the body's options of a detection request.

    Raises:
        ApiError: 415 for another media type, 413 for too many images or too large a body,
            400 for a malformed body, 422 for a body of the wrong shape or without images.
    """
    kind = media_type(request)
    if kind == "multipart/form-data":
        images, options = await _read_multipart(request, max_files)
    elif kind == "application/json" or kind.endswith("+json"):
        images, options = await _read_json(request, max_files)
    else:
        raise ApiError(
            415, "unsupported_media_type",
            f"content type {kind or '(none)'} is not supported; send multipart/form-data with `file` or "
            "`files`, or application/json with base64 `images`",
        )  # fmt: skip
    if not images:
        raise ApiError(422, "missing_image", "send one image as `file`, several as `files`, or JSON `images`")
    if len(images) > max_files:
        raise ApiError(413, "too_many_files", f"send at most {max_files} images per request")
    return images, options
