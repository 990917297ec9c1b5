"""The Open Inference Protocol v2 (KServe / Triton REST): health, metadata, config and ``infer``.

The model's tensors are described in :mod:`dyhead_serve.server.v2_tensors`. Inputs come as base64
in JSON or raw with Triton's binary tensor extension (``Inference-Header-Content-Length``); the
whole body may be compressed (``Content-Encoding: gzip`` or ``deflate``). Outputs come as JSON
tensors, or in the binary part of the response for those the request asks so for
(``binary_data_output`` / an output's ``binary_data``). Every model route also answers under
``/v2/models/{name}/versions/1/...``.

Request ``parameters`` may carry ``score_threshold``, ``max_detections`` and ``classes``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Annotated, Any

import anyio
import numpy as np
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from dyhead_serve import __version__
from dyhead_serve.server.content_encoding import inflate
from dyhead_serve.server.deps import ApiKey, Service, Settings
from dyhead_serve.server.errors import ApiError
from dyhead_serve.server.uploads import EncodedImage, check_json_structure, decode_base64_image, media_type
from dyhead_serve.server.v2_schemas import (
    V2Error,
    V2InferRequest,
    V2InferResponse,
    V2Live,
    V2ModelConfig,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2RepositoryModel,
    V2RequestInput,
    V2ResponseOutput,
    V2ServerMetadata,
    V2TensorMetadata,
)
from dyhead_serve.server.v2_tensors import (
    EXTENSIONS,
    INPUT_NAME,
    MODEL_VERSION,
    OUTPUTS,
    check_image_shape,
    detection_tensors,
    image_elements,
    model_config,
    model_named,
    options_from_parameters,
    repository_entry,
    split_binary_elements,
    tensor_bytes,
)

__all__ = ["model_router", "router"]

_HEADER_LENGTH = "inference-header-content-length"
_LENGTH = re.compile(r"[0-9]{1,12}")
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": V2Error, "description": text}
    for status, text in {
        400: "malformed request", 401: "missing or wrong X-API-Key", 404: "no such model or version",
        408: "the request did not arrive within read_timeout_s",
        413: "too large (also after Content-Encoding is undone)",
        415: "unsupported media type or content encoding", 422: "invalid parameters",
        503: "not ready or busy (see Retry-After)", 504: "timed out",
    }.items()
}  # fmt: skip
# The infer route reads its body itself (binary extension, compression): its schema for OpenAPI.
_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/V2InferRequest"}},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "binary tensor extension: the JSON request (Inference-Header-Content-"
                "Length bytes), then the raw tensors",
            },
        },
    }
}
_NOT_SERVED = (
    "{what} is not served by dyhead-serve; it serves /v2 (server metadata), /v2/health/live, "
    "/v2/health/ready, /v2/repository/index, and /v2/models/{{name}}[/versions/1] with /ready, "
    "/config and /infer; request counts and latencies are on /metrics (Prometheus)"
)

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])
model_router = APIRouter(
    prefix="/v2/models/{name}", tags=["open inference protocol v2"], dependencies=[ApiKey]
)
_VERSIONED = "/versions/{version}"


def _declare_version(
    version: Annotated[str, Path(description=f"the model version ({MODEL_VERSION!r})")],
) -> None:
    """Declares the ``{version}`` of the versioned routes (for validation and OpenAPI); the handlers
    read it from the path with :func:`_version`, so that the unversioned routes take none."""


def _version(request: Request) -> str | None:
    version: str | None = request.path_params.get("version")
    return version


_WITH_VERSION = [Depends(_declare_version)]


@router.get("", summary="Server metadata", response_model=V2ServerMetadata)
async def server_metadata() -> V2ServerMetadata:
    return V2ServerMetadata(name="dyhead-serve", version=__version__, extensions=EXTENSIONS)


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


@router.post(
    "/repository/index",
    summary="Model repository index (the one model this server runs)",
    response_model=list[V2RepositoryModel],
    dependencies=[ApiKey],
    responses={401: _ERRORS[401]},
)
async def repository_index(service: Service, settings: Settings) -> list[V2RepositoryModel]:
    return [repository_entry(service, settings)]


@router.get("/models/stats", include_in_schema=False)
@router.get("/models/{name}/stats", include_in_schema=False)
@router.get("/models/{name}/versions/{version}/stats", include_in_schema=False)
async def statistics_not_served(request: Request) -> JSONResponse:
    """A clear 404 for Triton's statistics extension (``get_inference_statistics``)."""
    return JSONResponse({"error": _NOT_SERVED.format(what="the statistics extension")}, status_code=404)


@model_router.get("", summary="Model metadata", response_model=V2ModelMetadata, responses=_ERRORS)
@model_router.get(
    _VERSIONED,
    summary="Model metadata",
    response_model=V2ModelMetadata,
    responses=_ERRORS,
    dependencies=_WITH_VERSION,
)
async def model_metadata(name: str, request: Request, service: Service) -> V2ModelMetadata:
    backend = model_named(service, name, _version(request))
    return V2ModelMetadata(
        name=backend.model_name,
        versions=[MODEL_VERSION],
        platform=f"dyhead-serve_{backend.name}",
        inputs=[V2TensorMetadata(name=INPUT_NAME, datatype="BYTES", shape=[-1])],
        outputs=[
            V2TensorMetadata(name=key, datatype=dt, shape=shape) for key, (dt, shape) in OUTPUTS.items()
        ],
    )


@model_router.get(
    "/config", summary="Model configuration (Triton)", response_model=V2ModelConfig, responses=_ERRORS
)
@model_router.get(
    _VERSIONED + "/config",
    dependencies=_WITH_VERSION,
    summary="Model configuration (Triton)",
    response_model=V2ModelConfig,
    responses=_ERRORS,
)
async def get_model_config(name: str, request: Request, service: Service) -> V2ModelConfig:
    return model_config(model_named(service, name, _version(request)))


_READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    400: {"model": V2ModelReady, "description": "not ready"},
}


@model_router.get(
    "/ready",
    summary="Model ready (400 until loaded and warmed up)",
    response_model=V2ModelReady,
    responses=_READY_RESPONSES,
)
@model_router.get(
    _VERSIONED + "/ready",
    dependencies=_WITH_VERSION,
    summary="Model ready (400 until loaded and warmed up)",
    response_model=V2ModelReady,
    responses=_READY_RESPONSES,
)
async def model_ready(name: str, request: Request, service: Service) -> JSONResponse:
    if service.backend is not None:
        model_named(service, name, _version(request))
    return JSONResponse({"name": name, "ready": service.ready}, status_code=200 if service.ready else 400)


def _flatten(data: list[Any]) -> Iterator[Any]:
    for value in data:
        if isinstance(value, list):
            yield from _flatten(value)
        else:
            yield value


def _image_elements(tensor: V2RequestInput, binary: bytes, max_files: int) -> list[EncodedImage]:
    count = check_image_shape(tensor.name, tensor.datatype, tensor.shape, max_files)
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size != len(binary):
            raise ApiError(400, "bad_request", "binary_data_size does not match the binary part of the body")
        raw = split_binary_elements(binary, count)
    elif tensor.data is not None:
        items = list(_flatten(tensor.data))  # at most MAX_JSON_SEPARATORS: the body was counted
        if len(items) != count:
            raise ApiError(400, "bad_request", f"shape says {count} images, the data holds {len(items)}")
        if not all(isinstance(item, str) for item in items):
            raise ApiError(400, "bad_request", "BYTES elements must be base64 strings in JSON")
        raw = [decode_base64_image(item, f"{INPUT_NAME}[{i}]") for i, item in enumerate(items)]
    else:
        raise ApiError(400, "bad_request", f"input {INPUT_NAME!r} has neither data nor binary_data_size")
    return image_elements(raw, count)


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


async def _read_infer_request(
    request: Request, max_files: int, max_bytes: int
) -> tuple[V2InferRequest, list[EncodedImage]]:
    if media_type(request) not in ("", "application/json", "application/octet-stream"):
        raise ApiError(
            415, "unsupported_media_type", "send application/json (or the binary tensor extension)"
        )
    body = await request.body()
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        body = await anyio.to_thread.run_sync(inflate, body, encoding, max_bytes)
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


def _wants_binary(infer_request: V2InferRequest) -> dict[str, bool]:
    """Each requested output (all by default), and whether it goes in the binary part."""
    default = (infer_request.parameters or {}).get("binary_data_output") is True
    if not infer_request.outputs:
        return dict.fromkeys(OUTPUTS, default)
    wanted: dict[str, bool] = {}
    for output in infer_request.outputs:
        binary = (output.parameters or {}).get("binary_data", default)
        if not isinstance(binary, bool):
            raise ApiError(400, "bad_request", f"output {output.name!r}: binary_data must be true or false")
        wanted[output.name] = binary
    unknown = [o for o in wanted if o not in OUTPUTS]
    if unknown:
        raise ApiError(400, "bad_request", f"unknown outputs {unknown}; this model has {list(OUTPUTS)}")
    return wanted


def _infer_response(
    response: V2InferResponse, tensors: dict[str, np.ndarray], wanted: dict[str, bool]
) -> Response:
    """JSON, or JSON followed by the binary outputs (Triton's binary tensor extension)."""
    blobs: list[bytes] = []
    for name, binary in wanted.items():
        array = tensors[name]
        output = V2ResponseOutput(name=name, shape=list(array.shape), datatype=OUTPUTS[name][0])
        if binary:
            blob = tensor_bytes(name, array)
            output.parameters = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            output.data = array.reshape(-1).tolist()
        response.outputs.append(output)
    header = json.dumps(response.model_dump(exclude_none=True), separators=(",", ":")).encode()
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(
        b"".join([header, *blobs]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


@model_router.post(
    "/infer",
    summary="Inference (image bytes in, detection tensors out)",
    response_model=V2InferResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    openapi_extra=_INFER_BODY,
)
@model_router.post(
    _VERSIONED + "/infer",
    dependencies=_WITH_VERSION,
    summary="Inference (image bytes in, detection tensors out)",
    response_model=V2InferResponse,
    response_model_exclude_none=True,
    responses=_ERRORS,
    openapi_extra=_INFER_BODY,
)
async def infer(name: str, request: Request, service: Service, settings: Settings) -> Response:
    backend = model_named(service, name, _version(request))
    service.require_capacity()
    infer_request, images = await _read_infer_request(request, settings.max_files, settings.max_upload_bytes)
    wanted = _wants_binary(infer_request)
    options = options_from_parameters(infer_request.parameters or {}, backend.class_names)
    results = await service.detect(images, options)
    response = V2InferResponse(
        model_name=backend.model_name, model_version=MODEL_VERSION, id=infer_request.id, outputs=[]
    )
    return _infer_response(response, detection_tensors(results), wanted)
