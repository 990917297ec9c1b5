"""``/v1``: detections as JSON, images with boxes drawn, the loaded model."""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response

from dyhead_serve.pipeline.draw import draw_detections
from dyhead_serve.pipeline.draw_threshold import DRAW_THRESHOLD
from dyhead_serve.server.deps import ApiKey, Service, Settings
from dyhead_serve.server.errors import ApiError
from dyhead_serve.server.openapi_docs import detect_request_body, error_responses
from dyhead_serve.server.options import DetectOptions, parse_options
from dyhead_serve.server.schemas import (
    Detection,
    DetectResponse,
    ImageDetections,
    ModelInfo,
    ModelsResponse,
    Timing,
)
from dyhead_serve.server.service import DetectionService, ImageResult
from dyhead_serve.server.uploads import read_detect_request
from dyhead_serve.zoo import DEFAULT_MODEL, demo_model_notice

__all__ = ["model_info", "router"]

router = APIRouter(prefix="/v1", tags=["detection"], dependencies=[ApiKey])

ScoreThreshold = Annotated[
    float | None,
    Query(ge=0.0, lt=1.0, description="minimum score of a returned detection (default: none dropped)"),
]
MaxDetections = Annotated[int | None, Query(ge=1, le=10_000, description="at most this many per image")]
Classes = Annotated[
    list[str] | None,
    Query(description="keep only these classes, by name or id; repeat or separate by commas"),
]
DrawThreshold = Annotated[
    float, Query(ge=0.0, le=1.0, description="draw only detections scoring at least this (query string only)")
]
_DETECT_ERRORS = error_responses(400, 401, 408, 413, 415, 422, 503, 504)


async def _read(
    request: Request, service: DetectionService, max_files: int, query: dict[str, Any]
) -> tuple[list[Any], DetectOptions]:
    backend = service.require_capacity()  # before reading the body: a busy server answers at once
    images, body_options = await read_detect_request(request, max_files)
    raw = {key: value for key, value in query.items() if value is not None}
    raw.update(body_options)  # the body wins over the query string
    return images, parse_options(raw, backend.class_names)


def _timing(results: Sequence[ImageResult], total_s: float) -> Timing:
    return Timing(
        total_ms=total_s * 1000,
        preprocess_ms=max(r.preprocess_s for r in results) * 1000,
        queue_ms=max(r.batch.queue_s for r in results) * 1000,
        inference_ms=max(r.batch.inference_s for r in results) * 1000,
        postprocess_ms=max(r.postprocess_s for r in results) * 1000,
        batch_size=max(r.batch.batch_size for r in results),
    )


@router.post(
    "/detect",
    summary="Detect objects in one or more images",
    description=(
        "Send one image as multipart field `file`, several as `files`, or a JSON body with base64 "
        "`images`. Options come from the query string, form fields or the JSON body (the body "
        "wins). Each image gets its original `width` and `height` and its `detections`, highest "
        "score first, boxes `[x1, y1, x2, y2]` in original pixels: the same detections as "
        "`dyhead-serve predict` gives for the same model and file."
    ),
    response_model=DetectResponse,
    responses=_DETECT_ERRORS,
    openapi_extra=detect_request_body(),
)
async def detect(
    request: Request,
    service: Service,
    settings: Settings,
    score_threshold: ScoreThreshold = None,
    max_detections: MaxDetections = None,
    classes: Classes = None,
) -> DetectResponse:
    started = time.perf_counter()
    query = {"score_threshold": score_threshold, "max_detections": max_detections, "classes": classes}
    images, options = await _read(request, service, settings.max_files, query)
    results = await service.detect(images, options)
    return DetectResponse(
        model=service.require_backend().model_name,
        results=[
            ImageDetections(
                file=r.name,
                width=r.detections.width,
                height=r.detections.height,
                detections=[Detection(**d) for d in r.detections.to_json()],
            )
            for r in results
        ],
        timing=_timing(results, time.perf_counter() - started),
    )


def _encode(result: ImageResult, image_format: str, draw_threshold: float) -> bytes:
    assert result.image is not None
    canvas = draw_detections(result.image, result.detections, draw_threshold)
    buffer = io.BytesIO()
    if image_format == "png":
        canvas.save(buffer, format="PNG")
    else:
        canvas.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@router.post(
    "/detect/annotated",
    summary="One image with its detections drawn",
    description=(
        "Same input and options as /v1/detect, for a single image; answers a JPEG (default) or PNG "
        f"showing the detections that score at least `draw_threshold` (default {DRAW_THRESHOLD}, as "
        "`dyhead-serve predict --out-dir` draws). Header `X-Detections`: the detections found (as "
        "/v1/detect returns them); `X-Detections-Drawn`: those drawn."
    ),
    response_class=Response,
    responses={
        200: {
            "description": "the image with boxes and `label score` captions",
            "content": {"image/jpeg": {}, "image/png": {}},
        },
        **_DETECT_ERRORS,
    },
    openapi_extra=detect_request_body(single=True),
)
async def detect_annotated(
    request: Request,
    service: Service,
    score_threshold: ScoreThreshold = None,
    max_detections: MaxDetections = None,
    classes: Classes = None,
    image_format: Annotated[Literal["jpeg", "png"], Query(alias="format")] = "jpeg",
    draw_threshold: DrawThreshold = DRAW_THRESHOLD,
) -> Response:
    query = {"score_threshold": score_threshold, "max_detections": max_detections, "classes": classes}
    images, options = await _read(request, service, 1, query)
    result = (await service.detect(images, options, keep_images=True))[0]
    content = await service.run_in_pool(_encode, result, image_format, draw_threshold)
    drawn = sum(1 for score in result.detections.scores.tolist() if score >= draw_threshold)
    return Response(
        content,
        media_type=f"image/{image_format}",
        headers={
            "X-Detections": str(len(result.detections)),
            "X-Detections-Drawn": str(drawn),
            "X-Model": service.require_backend().model_name,
        },
    )


def model_info(service: DetectionService) -> ModelInfo:
    """What /v1/models says of the loaded model (503 until it is loaded)."""
    if service.backend is None:
        service.require_ready()
        raise ApiError(503, "not_ready", "the model is loading")
    backend = service.backend
    return ModelInfo(
        name=backend.model_name,
        backend=backend.name,
        device=str(backend.device),
        precision=backend.precision,
        input_spec=backend.input_spec.to_dict(),
        class_names=list(backend.class_names),
        max_batch_size=service.settings.max_batch_size,
        ready=service.ready,
        notice=demo_model_notice("dyhead-serve serve --model dyhead_r50_atss_fpn_1x")
        if backend.model_name == DEFAULT_MODEL
        else None,
    )


@router.get(
    "/models",
    summary="The loaded model",
    response_model=ModelsResponse,
    responses=error_responses(401, 503),
)
async def models(service: Service) -> ModelsResponse:
    return ModelsResponse(models=[model_info(service)])
