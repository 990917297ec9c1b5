"""The Open Inference Protocol v2 model, whatever the transport (REST routes and gRPC share it).

One input, ``image``: ``BYTES`` of shape ``[N]`` (or ``[N, 1]``), each element an encoded image
file. Outputs, padded to the largest detection count K of the batch:

- ``num_detections`` INT32 [N]
- ``boxes`` FP32 [N, K, 4] (x1, y1, x2, y2 in original pixels, zeros past num_detections)
- ``scores`` FP32 [N, K]
- ``class_ids`` INT64 [N, K] (-1 past num_detections)
- ``labels`` BYTES [N, K] ("" past num_detections)
- ``image_sizes`` INT64 [N, 2] (height, width of each original image)

Raw (binary) tensors are little-endian and row-major; a BYTES tensor is its elements one after
the other, each preceded by its length as a 4-byte little-endian unsigned integer.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dyhead_serve.runtime.base import Backend
from dyhead_serve.server.errors import ApiError
from dyhead_serve.server.options import DetectOptions, parse_options
from dyhead_serve.server.service import DetectionService, ImageResult, ServiceState
from dyhead_serve.server.settings import ServerSettings
from dyhead_serve.server.uploads import EncodedImage
from dyhead_serve.server.v2_schemas import V2ModelConfig, V2ModelConfigTensor, V2RepositoryModel

__all__ = [
    "EXTENSIONS",
    "INPUT_NAME",
    "MODEL_VERSION",
    "OUTPUTS",
    "TRITON_TYPES",
    "check_image_shape",
    "detection_tensors",
    "image_elements",
    "model_config",
    "model_named",
    "options_from_parameters",
    "repository_entry",
    "serialize_bytes",
    "split_binary_elements",
    "tensor_bytes",
]

# What the server metadata says this server speaks beyond the core protocol.
EXTENSIONS = ["binary_tensor_data", "model_configuration", "parameters"]
INPUT_NAME = "image"
# The one version of the one model a server runs (the protocol's routes and calls may name it).
MODEL_VERSION = "1"
OUTPUTS: dict[str, tuple[str, list[int]]] = {
    "num_detections": ("INT32", [-1]),
    "boxes": ("FP32", [-1, -1, 4]),
    "scores": ("FP32", [-1, -1]),
    "class_ids": ("INT64", [-1, -1]),
    "labels": ("BYTES", [-1, -1]),
    "image_sizes": ("INT64", [-1, 2]),
}
# The protocol's datatypes as Triton's model configuration names them.
TRITON_TYPES = {"BYTES": "TYPE_STRING", "FP32": "TYPE_FP32", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64"}
_NUMPY_TYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
}
# Options a request's parameters may carry; other parameters (binary_data_output, ...) are the
# protocol's own.
_OPTION_NAMES = ("score_threshold", "max_detections", "classes")


def model_named(service: DetectionService, name: str, version: str | None = None) -> Backend:
    """The served backend if ``name`` (and ``version``, when given) name it.

    Raises:
        ApiError: 503 while there is no model, 404 naming what is served otherwise.
    """
    backend = service.backend
    if backend is None:
        service.require_ready()  # explains why there is no model (failed, loading)
        raise ApiError(503, "not_ready", "the model is loading")
    if name != backend.model_name:
        raise ApiError(404, "not_found", f"no model named {name!r}; this server runs {backend.model_name!r}")
    if version and version != MODEL_VERSION:
        raise ApiError(
            404,
            "not_found",
            f"model {name!r} has no version {version!r}; this server runs version {MODEL_VERSION!r}",
        )
    return backend


def model_config(backend: Backend) -> V2ModelConfig:
    """Triton's model configuration of the served model (``max_batch_size`` 0: whole shapes)."""
    return V2ModelConfig(
        name=backend.model_name,
        platform=f"dyhead-serve_{backend.name}",
        backend="dyhead-serve",
        max_batch_size=0,
        input=[V2ModelConfigTensor(name=INPUT_NAME, data_type=TRITON_TYPES["BYTES"], dims=[-1])],
        output=[
            V2ModelConfigTensor(name=key, data_type=TRITON_TYPES[dt], dims=shape)
            for key, (dt, shape) in OUTPUTS.items()
        ],
    )


def repository_entry(service: DetectionService, settings: ServerSettings) -> V2RepositoryModel:
    """The repository index's one entry: the served model and its state."""
    backend = service.backend
    name = backend.model_name if backend is not None else (settings.model or "default")
    state = {ServiceState.READY: "READY", ServiceState.LOADING: "LOADING"}.get(service.state, "UNAVAILABLE")
    return V2RepositoryModel(name=name, version=MODEL_VERSION, state=state, reason=service.error or "")


def split_binary_elements(blob: bytes, count: int) -> list[bytes]:
    """The elements of a raw BYTES tensor (each a uint32 LE length, then that many bytes).

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


def check_image_shape(name: str, datatype: str, shape: Sequence[int], max_files: int) -> int:
    """The number of images an input tensor declares, after checking it is our ``image``."""
    if name != INPUT_NAME or datatype != "BYTES":
        raise ApiError(400, "bad_request", f"expected one input {INPUT_NAME!r} of datatype BYTES")
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise ApiError(400, "bad_request", f"input {INPUT_NAME!r} must have shape [N] (or [N, 1])")
    count = int(shape[0])
    if count > max_files:
        raise ApiError(413, "too_many_files", f"send at most {max_files} images per request")
    if count < 1:
        raise ApiError(400, "bad_request", "send at least one image")
    return count


def image_elements(raw: Sequence[bytes], count: int) -> list[EncodedImage]:
    """The images of the input tensor, named as the protocol addresses them (``image[i]``)."""
    if len(raw) != count:
        raise ApiError(400, "bad_request", f"shape says {count} images, the data holds {len(raw)}")
    return [EncodedImage(f"{INPUT_NAME}[{i}]", data) for i, data in enumerate(raw)]


def options_from_parameters(parameters: Mapping[str, Any], class_names: Sequence[str]) -> DetectOptions:
    """The detection options among a request's parameters (``classes`` may be comma-separated)."""
    raw: dict[str, Any] = {key: parameters[key] for key in _OPTION_NAMES if key in parameters}
    if isinstance(raw.get("classes"), str):
        raw["classes"] = [raw["classes"]]
    return parse_options(raw, class_names)


def detection_tensors(results: Sequence[ImageResult]) -> dict[str, np.ndarray]:
    """The output tensors of a request, in :data:`OUTPUTS` order (``labels``: an object array of
    ``str``)."""
    n = len(results)
    k = max((len(r.detections) for r in results), default=0)
    boxes = np.zeros((n, k, 4), dtype=np.float32)
    scores = np.zeros((n, k), dtype=np.float32)
    class_ids = np.full((n, k), -1, dtype=np.int64)
    labels = np.full((n, k), "", dtype=object)
    for i, result in enumerate(results):
        detections = result.detections
        m = len(detections)
        boxes[i, :m] = detections.boxes.detach().cpu().numpy()
        scores[i, :m] = detections.scores.detach().cpu().numpy()
        class_ids[i, :m] = detections.classes.detach().cpu().numpy()
        labels[i, :m] = list(detections.labels)
    return {
        "num_detections": np.array([len(r.detections) for r in results], dtype=np.int32),
        "boxes": boxes,
        "scores": scores,
        "class_ids": class_ids,
        "labels": labels,
        "image_sizes": np.array(
            [(r.detections.height, r.detections.width) for r in results], dtype=np.int64
        ).reshape(n, 2),
    }


def serialize_bytes(elements: Sequence[bytes]) -> bytes:
    """A raw BYTES tensor: each element preceded by its uint32 little-endian length."""
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def tensor_bytes(name: str, array: np.ndarray) -> bytes:
    """Output ``name`` as raw tensor bytes (row-major, little-endian)."""
    datatype = OUTPUTS[name][0]
    if datatype == "BYTES":
        return serialize_bytes([str(value).encode("utf-8") for value in array.reshape(-1)])
    return np.ascontiguousarray(array, dtype=_NUMPY_TYPES[datatype]).tobytes()
