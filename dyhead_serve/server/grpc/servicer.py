"""The calls of ``inference.GRPCInferenceService`` (KServe v2 / Triton gRPC) on the service that
also answers HTTP: the same model, admission, batching, limits and API key.

A refusal is an :class:`~dyhead_serve.server.errors.ApiError` as on HTTP; :data:`GRPC_CODES`
turns its HTTP status into the gRPC status code a client sees, with the same message (and a
``retry-after`` trailer where HTTP sends ``Retry-After``).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import grpc

from dyhead_serve import __version__
from dyhead_serve.server.errors import ApiError
from dyhead_serve.server.grpc import open_inference_pb2 as pb
from dyhead_serve.server.service import DetectionService
from dyhead_serve.server.settings import ServerSettings
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

__all__ = ["API_KEY_METADATA", "GRPC_CODES", "InferenceServicer"]

# gRPC metadata keys are lower case: the HTTP header X-API-Key, as a gRPC client sends it.
API_KEY_METADATA = "x-api-key"

# The HTTP statuses of ApiError, as gRPC status codes.
GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_code(error: ApiError) -> grpc.StatusCode:
    """The status code of a refusal: a full queue is RESOURCE_EXHAUSTED (retry later), a server
    not (or no longer) ready UNAVAILABLE."""
    if error.code == "queue_full":
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return GRPC_CODES.get(error.status, grpc.StatusCode.UNKNOWN)


def _parameter_value(parameter: pb.InferParameter) -> Any:
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def _parameters(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    return {key: _parameter_value(value) for key, value in parameters.items()}


class InferenceServicer:
    """One coroutine per call of the service: request message in, response message out, or an
    :class:`ApiError` (the API key is checked by the caller, from the call's metadata)."""

    def __init__(self, service: DetectionService, settings: ServerSettings) -> None:
        self.service = service
        self.settings = settings

    def check_api_key(self, metadata: Mapping[str, str | bytes]) -> None:
        """401 (UNAUTHENTICATED) unless the call carries the server's key as ``x-api-key``."""
        if self.settings.api_key is None:
            return
        expected = self.settings.api_key.get_secret_value().encode("ascii")
        given = metadata.get(API_KEY_METADATA)
        given_bytes = given.encode("latin-1", "replace") if isinstance(given, str) else given
        if given_bytes is None or not secrets.compare_digest(given_bytes, expected):
            raise ApiError(401, "unauthorized", f"missing or wrong {API_KEY_METADATA} metadata")

    async def server_live(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.ready)

    async def server_metadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="dyhead-serve", version=__version__, extensions=EXTENSIONS)

    async def model_ready(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        if self.service.backend is not None:
            model_named(self.service, request.name, request.version)
        return pb.ModelReadyResponse(ready=self.service.ready)

    async def model_metadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        backend = model_named(self.service, request.name, request.version)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=backend.model_name,
            versions=[MODEL_VERSION],
            platform=f"dyhead-serve_{backend.name}",
            inputs=[tensor(name=INPUT_NAME, datatype="BYTES", shape=[-1])],
            outputs=[tensor(name=key, datatype=dt, shape=shape) for key, (dt, shape) in OUTPUTS.items()],
        )

    async def model_config(self, request: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
        config = model_config(model_named(self.service, request.name, request.version))
        return pb.ModelConfigResponse(
            config=pb.ModelConfig(
                name=config.name,
                platform=config.platform,
                backend=config.backend,
                max_batch_size=config.max_batch_size,
                input=[
                    pb.ModelInput(name=t.name, data_type=pb.DataType.Value(t.data_type), dims=t.dims)
                    for t in config.input
                ],
                output=[
                    pb.ModelOutput(name=t.name, data_type=pb.DataType.Value(t.data_type), dims=t.dims)
                    for t in config.output
                ],
            )
        )

    async def repository_index(self, request: pb.RepositoryIndexRequest) -> pb.RepositoryIndexResponse:
        entry = repository_entry(self.service, self.settings)
        if request.ready and entry.state != "READY":
            return pb.RepositoryIndexResponse()
        index = pb.RepositoryIndexResponse.ModelIndex(**entry.model_dump())
        return pb.RepositoryIndexResponse(models=[index])

    async def model_infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        backend = model_named(self.service, request.model_name, request.model_version)
        self.service.require_capacity()
        if len(request.inputs) != 1:
            raise ApiError(400, "bad_request", f"expected exactly one input, {INPUT_NAME!r}")
        tensor = request.inputs[0]
        count = check_image_shape(tensor.name, tensor.datatype, list(tensor.shape), self.settings.max_files)
        if request.raw_input_contents:
            if len(request.raw_input_contents) != 1:
                raise ApiError(400, "bad_request", "raw_input_contents must hold one entry per input")
            if tensor.contents.bytes_contents:
                raise ApiError(400, "bad_request", "send the images in contents or in raw_input_contents")
            raw = split_binary_elements(request.raw_input_contents[0], count)
        else:
            raw = list(tensor.contents.bytes_contents)
        images = image_elements(raw, count)
        wanted = [output.name for output in request.outputs] or list(OUTPUTS)
        unknown = [name for name in wanted if name not in OUTPUTS]
        if unknown:
            raise ApiError(400, "bad_request", f"unknown outputs {unknown}; this model has {list(OUTPUTS)}")
        options = options_from_parameters(_parameters(request.parameters), backend.class_names)
        results = await self.service.detect(images, options)
        tensors = detection_tensors(results)
        response = pb.ModelInferResponse(
            model_name=backend.model_name, model_version=MODEL_VERSION, id=request.id
        )
        # Raw outputs, as Triton answers: exact little-endian values, one entry per output.
        for name in wanted:
            array = tensors[name]
            response.outputs.add(name=name, datatype=OUTPUTS[name][0], shape=list(array.shape))
            response.raw_output_contents.append(tensor_bytes(name, array))
        return response
