"""Bodies of the Open Inference Protocol v2 (KServe / Triton) REST API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

__all__ = [
    "V2Error",
    "V2InferRequest",
    "V2InferResponse",
    "V2Live",
    "V2ModelMetadata",
    "V2ModelReady",
    "V2Ready",
    "V2RequestInput",
    "V2RequestOutput",
    "V2ResponseOutput",
    "V2ServerMetadata",
    "V2TensorMetadata",
]


class V2Error(BaseModel):
    """The protocol's error body."""

    error: str


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(..., description="-1 marks a variable dimension")


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str] | None = None
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


class V2RequestInput(BaseModel):
    """An input tensor. For this model: ``image``, ``BYTES``, shape ``[N]``, one encoded image
    file per element, base64 in JSON (or raw with the binary tensor extension)."""

    name: str = Field(..., examples=["image"])
    shape: list[StrictInt] = Field(..., max_length=8, examples=[[1]])
    datatype: str = Field(..., examples=["BYTES"])
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(
        default=None, description="row-major, flat or nested; absent with binary data"
    )


class V2RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    """``parameters`` may hold ``score_threshold``, ``max_detections`` and ``classes``."""

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[V2RequestInput] = Field(..., min_length=1)
    outputs: list[V2RequestOutput] | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "parameters": {"score_threshold": 0.3},
                    "inputs": [
                        {"name": "image", "shape": [1], "datatype": "BYTES", "data": ["<base64 JPEG>"]}
                    ],
                }
            ]
        }
    )


class V2ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any]


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[V2ResponseOutput]
