"""Request and response bodies of the ``/v1`` API (the OpenAPI document is built from these)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

__all__ = [
    "DetectJsonRequest",
    "DetectOptionsIn",
    "DetectResponse",
    "Detection",
    "ErrorBody",
    "ErrorResponse",
    "HealthResponse",
    "ImageDetections",
    "ImageIn",
    "ModelInfo",
    "ModelsResponse",
    "Timing",
]

_TINY_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAEklEQVR4nGP4z8CAFWEXHbQSACj/P8Fu7N9hAAAAAElFTkSuQmCC"
)


def _not_a_boolean(value: Any) -> Any:
    # JSON true/false would otherwise be taken as 1/0.
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    return value


NotBoolean = BeforeValidator(_not_a_boolean)


class DetectOptionsIn(BaseModel):
    """Options of a detection request (query string, form fields or JSON body)."""

    model_config = ConfigDict(extra="forbid")

    score_threshold: Annotated[float | None, NotBoolean] = Field(
        default=None,
        ge=0.0,
        lt=1.0,
        description="minimum score of a returned detection; the model's own candidate threshold "
        "(0.05 for the official models) applies first either way (default: none dropped)",
        examples=[0.3],
    )
    max_detections: Annotated[int | None, NotBoolean] = Field(
        default=None,
        ge=1,
        le=10_000,
        description="at most this many detections per image, best first",
        examples=[20],
    )
    classes: list[Annotated[str | int, NotBoolean]] | None = Field(
        default=None,
        description="keep only these classes, by name or id (a name or id list; commas also separate)",
        examples=[["person", "car"], [0, 2]],
    )


class ImageIn(BaseModel):
    """One base64-encoded image (a ``data:`` URL prefix is accepted)."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(..., description="the encoded file (JPEG, PNG, ...) in base64", examples=[_TINY_PNG])
    name: str | None = Field(
        default=None, max_length=256, description="echoed back as `file`", examples=["dot.png"]
    )


class DetectJsonRequest(DetectOptionsIn):
    """A JSON detection request: images in base64 plus the options."""

    images: list[ImageIn] = Field(..., min_length=1, description="one or more images")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"images": [{"data": _TINY_PNG, "name": "dot.png"}], "score_threshold": 0.3}]
        },
    )


class Detection(BaseModel):
    """One detected object."""

    box: list[float] = Field(
        ..., min_length=4, max_length=4, description="[x1, y1, x2, y2] in original image pixels",
        examples=[[12.5, 40.0, 210.3, 388.9]],
    )  # fmt: skip
    score: float = Field(..., examples=[0.87])
    class_id: int = Field(..., examples=[0])
    label: str = Field(..., examples=["person"])


class ImageDetections(BaseModel):
    """The detections of one image, highest score first."""

    file: str | None = Field(default=None, description="the uploaded file name, when one was given")
    width: int = Field(..., description="original image width in pixels")
    height: int = Field(..., description="original image height in pixels")
    detections: list[Detection]


class Timing(BaseModel):
    """Where the time of a request went, in milliseconds (the slowest image where there are several)."""

    total_ms: float
    preprocess_ms: float = Field(..., description="decoding, resizing and normalising")
    queue_ms: float = Field(..., description="waiting for a backend call")
    inference_ms: float = Field(..., description="the backend call (shared by its batch)")
    postprocess_ms: float = Field(..., description="decoding boxes, NMS, mapping to original pixels")
    batch_size: int = Field(..., description="largest batch an image of this request ran in")


class DetectResponse(BaseModel):
    """Detections of every image of the request, in request order."""

    model: str = Field(..., description="name of the model that ran")
    results: list[ImageDetections]
    timing: Timing

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "dyhead_r50_atss_fpn_1x",
                    "results": [
                        {
                            "file": "street.jpg",
                            "width": 640,
                            "height": 480,
                            "detections": [
                                {
                                    "box": [12.5, 40.0, 210.3, 388.9],
                                    "score": 0.87,
                                    "class_id": 0,
                                    "label": "person",
                                }
                            ],
                        }
                    ],
                    "timing": {
                        "total_ms": 212.0,
                        "preprocess_ms": 9.1,
                        "queue_ms": 4.0,
                        "inference_ms": 190.2,
                        "postprocess_ms": 3.3,
                        "batch_size": 2,
                    },
                }
            ]
        }
    )


class ModelInfo(BaseModel):
    """The loaded model: what runs it and what it expects."""

    name: str
    backend: str = Field(..., description="torch, onnxruntime or tensorrt")
    device: str
    precision: str = Field(..., description="fp32 or fp16")
    input_spec: dict[str, Any] = Field(..., description="channel order, pixel mean/std, resize rule, padding")
    class_names: list[str]
    max_batch_size: int
    ready: bool
    notice: str | None = Field(
        default=None,
        description="what to know about this model (the embedded demo model says what it detects)",
    )


class ModelsResponse(BaseModel):
    """The models this server runs (one)."""

    models: list[ModelInfo]


class HealthResponse(BaseModel):
    """Liveness or readiness, with the model's state (loading, ready, failed, stopping)."""

    status: str = Field(..., examples=["ready"])
    detail: str | None = None


class ErrorBody(BaseModel):
    code: str = Field(..., examples=["invalid_image"])
    message: str = Field(..., examples=["photo.jpg: not an image in a format we can decode"])


class ErrorResponse(BaseModel):
    """Every error of the /v1 API."""

    error: ErrorBody
