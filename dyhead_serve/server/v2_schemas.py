"""Bodies of the Open Inference Protocol v2 (KServe / Triton) REST API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

__all__ = [
    "V2Error",
    "V2InferRequest",
    "V2InferResponse",
    "V2Live",
    "V2ModelConfig",
    "V2ModelConfigTensor",
    "V2ModelMetadata",
    "V2ModelReady",
    "V2Ready",
    "V2RepositoryModel",
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
    """A requested output; ``parameters.binary_data: true`` asks for it in the binary part."""

    name: str
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    """``parameters`` may hold ``score_threshold``, ``max_detections`` and ``classes``, and
    ``binary_data_output: true`` (every output not asked for otherwise in the binary part)."""

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
    """An output tensor: ``data`` in JSON, or ``parameters.binary_data_size`` bytes of the binary
    part of the response when the request asked for binary outputs."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class V2ModelConfigTensor(BaseModel):
    name: str
    data_type: str = Field(..., examples=["TYPE_STRING"])
    dims: list[int]


class V2ModelConfig(BaseModel):
    """Triton's model configuration, the fields that describe this server's model (``max_batch_size``
    0: the dims are whole shapes, the leading -1 being the number of images)."""

    name: str
    platform: str
    backend: str
    max_batch_size: int
    input: list[V2ModelConfigTensor]
    output: list[V2ModelConfigTensor]


class V2RepositoryModel(BaseModel):
    name: str
    version: str
    state: str = Field(..., examples=["READY"])
    reason: str = ""


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[V2ResponseOutput]
