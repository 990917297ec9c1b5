"""The Open Inference Protocol v2 (KServe / Triton REST): health, metadata and ``infer``.

The model takes one input, ``image``: ``BYTES`` of shape ``[N]``, each element an encoded image
file, base64 in JSON or raw with Triton's binary tensor extension (``Inference-Header-Content-
Length``; each element prefixed by its 4-byte little-endian length). It answers JSON tensors,
padded to the largest detection count K of the batch:

- ``num_detections`` INT32 [N]
- ``boxes`` FP32 [N, K, 4] (x1, y1, x2, y2 in original pixels, zeros past num_detections)
- ``scores`` FP32 [N, K]
- ``class_ids`` INT64 [N, K] (-1 past num_detections)
- ``labels`` BYTES [N, K] ("" past num_detections)
- ``image_sizes`` INT64 [N, 2] (height, width of each original image)

Request ``parameters`` may carry ``score_threshold``, ``max_detections`` and ``classes``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from dyhead_serve import __version__
from dyhead_serve.runtime.base import Backend
from dyhead_serve.server.deps import ApiKey, Service, Settings
from dyhead_serve.server.errors import ApiError
from dyhead_serve.server.options import parse_options
from dyhead_serve.server.service import DetectionService, ImageResult
from dyhead_serve.server.uploads import EncodedImage, check_json_structure, decode_base64_image, media_type
from dyhead_serve.server.v2_schemas import (
    V2Error,
    V2InferRequest,
    V2InferResponse,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2RequestInput,
    V2ResponseOutput,
    V2ServerMetadata,
    V2TensorMetadata,
)

__all__ = ["INPUT_NAME", "OUTPUTS", "router"]

INPUT_NAME = "image"
OUTPUTS = {
    "num_detections": ("INT32", [-1]),
    "boxes": ("FP32", [-1, -1, 4]),
    "scores": ("FP32", [-1, -1]),
    "class_ids": ("INT64", [-1, -1]),
    "labels": ("BYTES", [-1, -1]),
    "image_sizes": ("INT64", [-1, 2]),
}
_HEADER_LENGTH = "inference-header-content-length"
_LENGTH = re.compile(r"[0-9]{1,12}")
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": V2Error, "description": text}
    for status, text in {
        400: "malformed request", 401: "missing or wrong X-API-Key", 404: "no such model",
        408: "the request did not arrive within read_timeout_s", 413: "too large",
        415: "unsupported media type", 422: "invalid parameters",
        503: "not ready or busy (see Retry-After)", 504: "timed out",
    }.items()
}  # fmt: skip

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])
model_router = APIRouter(
    prefix="/v2/models/{name}", tags=["open inference protocol v2"], dependencies=[ApiKey]
)


@router.get("", summary="Server metadata", response_model=V2ServerMetadata)
async def server_metadata() -> V2ServerMetadata:
    return V2ServerMetadata(name="dyhead-serve", version=__version__, extensions=["binary_tensor_data"])


@router.get("/health/live", summary="Server live", response_model=V2Live)
async def server_live() -> V2Live:
    return V2Live(live=True)


@router.get(
    "/health/ready",
    summary="Server ready (400 until the model is loaded and warmed up)",
    response_model=V2Ready,
    responses={400: {"model": V2Ready, "description": "not ready"}},
)
async def server_ready(service: Service) -> JSONResponse:
    return JSONResponse({"ready": service.ready}, status_code=200 if service.ready else 400)


def _backend_named(service: DetectionService, name: str) -> Backend:
    backend = service.backend
    if backend is None:
        service.require_ready()  # explains why there is no model (failed, loading)
        raise ApiError(503, "not_ready", "the model is loading")
    if name != backend.model_name:
        raise ApiError(404, "not_found", f"no model named {name!r}; this server runs {backend.model_name!r}")
    return backend


@model_router.get("", summary="Model metadata", response_model=V2ModelMetadata, responses=_ERRORS)
async def model_metadata(name: str, service: Service) -> V2ModelMetadata:
    backend = _backend_named(service, name)
    return V2ModelMetadata(
        name=backend.model_name,
        platform=f"dyhead-serve_{backend.name}",
        inputs=[V2TensorMetadata(name=INPUT_NAME, datatype="BYTES", shape=[-1])],
        outputs=[
            V2TensorMetadata(name=key, datatype=dt, shape=shape) for key, (dt, shape) in OUTPUTS.items()
        ],
    )


@model_router.get(
    "/ready",
    summary="Model ready (400 until loaded and warmed up)",
    response_model=V2ModelReady,
    responses={**_ERRORS, 400: {"model": V2ModelReady, "description": "not ready"}},
)
async def model_ready(name: str, service: Service) -> JSONResponse:
    if service.backend is not None:
        _backend_named(service, name)
    return JSONResponse({"name": name, "ready": service.ready}, status_code=200 if service.ready else 400)


def _flatten(data: list[Any]) -> Iterator[Any]:
    for value in data:
        if isinstance(value, list):
            yield from _flatten(value)
        else:
            yield value


def _split_binary_elements(blob: bytes, count: int) -> list[bytes]:
    """Triton's binary BYTES layout: each element is a uint32 LE length then that many bytes.

    Stops at the element past ``count``: millions of empty elements cost one step, not millions.
    """
    elements: list[bytes] = []
    offset = 0
    while offset < len(blob):
        if len(elements) == count:
            raise ApiError(
                400, "bad_request", f"binary BYTES data holds more than the {count} images of its shape"
            )
        if offset + 4 > len(blob):
            raise ApiError(400, "bad_request", "binary BYTES data ends inside an element's length prefix")
        (size,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        if offset + size > len(blob):
            raise ApiError(400, "bad_request", "binary BYTES data is shorter than an element's length prefix")
        elements.append(blob[offset : offset + size])
        offset += size
    return elements


def _image_elements(tensor: V2RequestInput, binary: bytes, max_files: int) -> list[EncodedImage]:
    if tensor.name != INPUT_NAME or tensor.datatype != "BYTES":
        raise ApiError(400, "bad_request", f"expected one input {INPUT_NAME!r} of datatype BYTES")
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise ApiError(400, "bad_request", f"input {INPUT_NAME!r} must have shape [N] (or [N, 1])")
    count = tensor.shape[0]
    if count > max_files:
        raise ApiError(413, "too_many_files", f"send at most {max_files} images per request")
    if count < 1:
        raise ApiError(400, "bad_request", "send at least one image")
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size != len(binary):
            raise ApiError(400, "bad_request", "binary_data_size does not match the binary part of the body")
        raw = _split_binary_elements(binary, count)
    elif tensor.data is not None:
        items = list(_flatten(tensor.data))  # at most MAX_JSON_SEPARATORS: the body was counted
        if len(items) != count:
            raise ApiError(400, "bad_request", f"shape says {count} images, the data holds {len(items)}")
        if not all(isinstance(item, str) for item in items):
            raise ApiError(400, "bad_request", "BYTES elements must be base64 strings in JSON")
        raw = [decode_base64_image(item, f"{INPUT_NAME}[{i}]") for i, item in enumerate(items)]
    else:
        raise ApiError(400, "bad_request", f"input {INPUT_NAME!r} has neither data nor binary_data_size")
    if len(raw) != count:
        raise ApiError(400, "bad_request", f"shape says {count} images, the data holds {len(raw)}")
    return [EncodedImage(f"{INPUT_NAME}[{i}]", data) for i, data in enumerate(raw)]


def _parse_infer_request(
    header: bytes, binary: bytes, max_files: int
) -> tuple[V2InferRequest, list[EncodedImage]]:
    """Validate the JSON part and cut out the images (on a worker thread)."""
    try:
        infer = V2InferRequest.model_validate_json(header)
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise ApiError(400, "bad_request", f"not an inference request: {details}") from None
    if len(infer.inputs) != 1:
        raise ApiError(400, "bad_request", f"expected exactly one input, {INPUT_NAME!r}")
    return infer, _image_elements(infer.inputs[0], binary, max_files)


async def _read_infer_request(request: Request, max_files: int) -> tuple[V2InferRequest, list[EncodedImage]]:
    if media_type(request) not in ("", "application/json", "application/octet-stream"):
        raise ApiError(
            415, "unsupported_media_type", "send application/json (or the binary tensor extension)"
        )
    body = await request.body()
    header_length = request.headers.get(_HEADER_LENGTH)
    if header_length is not None:
        # ASCII digits only: str.isdigit also accepts "²", which int() refuses.
        if not _LENGTH.fullmatch(header_length) or int(header_length) > len(body):
            raise ApiError(400, "bad_request", f"{_HEADER_LENGTH} must be a length within the body")
        body, binary = body[: int(header_length)], body[int(header_length) :]
    else:
        binary = b""
    check_json_structure(body)
    return await anyio.to_thread.run_sync(_parse_infer_request, body, binary, max_files)


def _outputs(results: list[ImageResult]) -> dict[str, V2ResponseOutput]:
    n = len(results)
    k = max((len(r.detections) for r in results), default=0)
    boxes: list[float] = []
    scores: list[float] = []
    class_ids: list[int] = []
    labels: list[str] = []
    for r in results:
        pad = k - len(r.detections)
        for d in r.detections.to_json():
            boxes.extend(d["box"])
            scores.append(d["score"])
            class_ids.append(d["class_id"])
            labels.append(d["label"])
        boxes.extend([0.0] * 4 * pad)
        scores.extend([0.0] * pad)
        class_ids.extend([-1] * pad)
        labels.extend([""] * pad)
    data: dict[str, tuple[list[int], list[Any]]] = {
        "num_detections": ([n], [len(r.detections) for r in results]),
        "boxes": ([n, k, 4], boxes),
        "scores": ([n, k], scores),
        "class_ids": ([n, k], class_ids),
        "labels": ([n, k], labels),
        "image_sizes": ([n, 2], [v for r in results for v in (r.detections.height, r.detections.width)]),
    }
    return {
        name: V2ResponseOutput(name=name, shape=shape, datatype=OUTPUTS[name][0], data=values)
        for name, (shape, values) in data.items()
    }


@model_router.post(
    "/infer",
    summary="Inference (image bytes in, detection tensors out)",
    response_model=V2InferResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
)
async def infer(name: str, request: Request, service: Service, settings: Settings) -> V2InferResponse:
    backend = _backend_named(service, name)
    service.require_capacity()
    infer_request, images = await _read_infer_request(request, settings.max_files)
    wanted = [o.name for o in infer_request.outputs] if infer_request.outputs else list(OUTPUTS)
    unknown = [o for o in wanted if o not in OUTPUTS]
    if unknown:
        raise ApiError(400, "bad_request", f"unknown outputs {unknown}; this model has {list(OUTPUTS)}")
    parameters = infer_request.parameters or {}
    raw_options: dict[str, Any] = {
        key: parameters[key] for key in ("score_threshold", "max_detections", "classes") if key in parameters
    }
    if isinstance(raw_options.get("classes"), str):
        raw_options["classes"] = [raw_options["classes"]]
    options = parse_options(raw_options, backend.class_names)
    results = await service.detect(images, options)
    outputs = _outputs(results)
    return V2InferResponse(
        model_name=backend.model_name, id=infer_request.id, outputs=[outputs[o] for o in wanted]
    )
