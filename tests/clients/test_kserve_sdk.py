"""The kserve SDK (0.21), as a KServe user drives a v2 server: its ``InferenceRESTClient`` and
``InferenceGRPCClient`` against a live ``dyhead-serve serve`` (the embedded default model) on
loopback ports: server live and ready, model ready, model metadata, and inference on the shipped
sample ``examples/shapes.jpg`` whose detections equal ``dyhead-serve predict`` exactly.

The SDK's clients have no metadata call: metadata is read with the SDK's own protocol code (its
pydantic models of the v2 REST responses, its generated gRPC stub).

kserve requires uvicorn[standard], pandas, kubernetes and more, so it is not in the dev
environment, where this module skips: ``.ci/kserve_client.sh`` runs it in an environment of its
own against the dev environment's ``dyhead-serve`` (``DYHEAD_SERVE``, else the one on PATH).
It imports nothing of this repository (that environment does not have it).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

NOT_HERE = "the kserve SDK is not installed here: .ci/kserve_client.sh runs this in an environment of its own"
pytest.importorskip("kserve", reason=NOT_HERE)
import grpc  # noqa: E402 (kserve's dependencies, after the importorskip)
import httpx  # noqa: E402
import numpy as np  # noqa: E402
from kserve import (  # noqa: E402
    InferenceGRPCClient,
    InferenceRESTClient,
    InferInput,
    InferRequest,
    InferResponse,
    RESTConfig,
)
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb  # noqa: E402
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub  # noqa: E402
from kserve.protocol.infer_type import RequestedOutput  # noqa: E402
from kserve.protocol.rest.v2_datamodels import ModelMetadataResponse, ServerMetadataResponse  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "shapes.jpg"
MODEL = "default"  # the name the embedded default model is served under
OUTPUTS = {
    "num_detections": "INT32",
    "boxes": "FP32",
    "scores": "FP32",
    "class_ids": "INT64",
    "labels": "BYTES",
    "image_sizes": "INT64",
}
START_TIMEOUT_S = 120.0
CALL_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Served:
    http: str  # http://127.0.0.1:PORT
    grpc: str  # 127.0.0.1:PORT


def dyhead_serve() -> str:
    """The ``dyhead-serve`` to test: $DYHEAD_SERVE (which must exist), else the one on PATH."""
    named = os.environ.get("DYHEAD_SERVE")
    if named:
        assert os.access(named, os.X_OK), f"DYHEAD_SERVE={named} is not an executable"
        return named
    found = shutil.which("dyhead-serve")
    if found is None:
        pytest.skip("no dyhead-serve to test: set DYHEAD_SERVE or put one on PATH")
    return found


def free_ports(count: int) -> list[int]:
    """Ports free on loopback now (held together, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_ready(url: str, server: subprocess.Popen, log: Path) -> None:
    """Poll ``url`` until it answers 200, at most START_TIMEOUT_S; fail at once if the server exits."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"dyhead-serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"dyhead-serve was not ready within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """``dyhead-serve serve`` with its default model, HTTP and gRPC on free loopback ports."""
    executable = dyhead_serve()
    http_port, grpc_port = free_ports(2)
    command = [executable, "serve", "--host", "127.0.0.1"]
    command += ["--port", str(http_port), "--grpc-port", str(grpc_port)]
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "server.log"
        with log.open("wb") as out:
            server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_ready(f"http://127.0.0.1:{http_port}/v2/health/ready", server, log)
            yield Served(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}")
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@pytest.fixture(scope="module")
def predicted() -> list[dict]:
    """The detections ``dyhead-serve predict examples/shapes.jpg`` prints."""
    done = subprocess.run(
        [dyhead_serve(), "predict", "examples/shapes.jpg"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (image,) = json.loads(done.stdout)
    assert image["detections"], "predict found nothing on the sample: nothing to compare"
    return image["detections"]


def sample_request(request_id: str, binary_outputs: bool = False) -> InferRequest:
    """The sample photograph as one BYTES element, the request the SDK builds for it."""
    tensor = InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([SAMPLE.read_bytes()], dtype=object), binary_data=True)
    outputs = None
    if binary_outputs:
        outputs = [RequestedOutput(name, parameters={"binary_data": True}) for name in OUTPUTS]
    return InferRequest(MODEL, [tensor], request_id=request_id, request_outputs=outputs)


def assert_same_as_predict(response: InferResponse, expected: list[dict]) -> None:
    """Every output of one image's response equals predict's detections (difference 0)."""
    out = {output.name: output for output in response.outputs}
    assert {name: output.datatype for name, output in out.items()} == OUTPUTS
    count = len(expected)
    assert out["num_detections"].as_numpy().tolist() == [count]
    assert out["image_sizes"].as_numpy().tolist() == [[240, 320]]
    scores, boxes = out["scores"].as_numpy(), out["boxes"].as_numpy()
    assert scores.dtype == np.float32 and boxes.dtype == np.float32 and scores.shape == (1, count)
    assert scores[0].tolist() == [d["score"] for d in expected]
    assert boxes[0].tolist() == [d["box"] for d in expected]
    assert out["class_ids"].as_numpy()[0].tolist() == [d["class_id"] for d in expected]
    labels = [label.decode() if isinstance(label, bytes) else label for label in out["labels"].as_numpy()[0]]
    assert labels == [d["label"] for d in expected]


def test_rest_client(served: Served, predicted: list[dict]) -> None:
    async def run() -> None:
        config = RESTConfig(protocol="v2", timeout=CALL_TIMEOUT_S)
        async with InferenceRESTClient(config) as client:
            assert await client.is_server_live(served.http) is True
            assert await client.is_server_ready(served.http) is True
            assert await client.is_model_ready(served.http, MODEL) is True
            assert await client.is_model_ready(served.http, "no-such-model") is False

            # JSON outputs, then the binary tensor extension for every output.
            # (Only a response with binary tensors after its JSON says how long the JSON is.)
            json_headers: dict[str, str] = {}
            response = await client.infer(
                served.http, sample_request("kserve-rest"), MODEL, response_headers=json_headers
            )
            assert "inference-header-content-length" not in json_headers
            assert response.id == "kserve-rest" and response.model_name == MODEL
            assert_same_as_predict(response, predicted)
            bin_headers: dict[str, str] = {}
            binary = await client.infer(
                served.http, sample_request("kserve-rest-binary", True), MODEL, response_headers=bin_headers
            )
            assert "inference-header-content-length" in bin_headers
            assert_same_as_predict(binary, predicted)

    asyncio.run(run())

    with httpx.Client(base_url=served.http, timeout=CALL_TIMEOUT_S) as http:
        server = ServerMetadataResponse.model_validate(http.get("/v2").raise_for_status().json())
        assert server.name == "dyhead-serve" and "binary_tensor_data" in server.extensions
        model_json = http.get(f"/v2/models/{MODEL}").raise_for_status().json()
    model = ModelMetadataResponse.model_validate(model_json)
    assert model.name == MODEL
    assert [(t.name, t.datatype, t.shape) for t in model.inputs] == [("image", "BYTES", [-1])]
    assert {t.name: t.datatype for t in model.outputs} == OUTPUTS


def test_grpc_client(served: Served, predicted: list[dict]) -> None:
    async def run() -> None:
        async with InferenceGRPCClient(served.grpc, timeout=CALL_TIMEOUT_S) as client:
            assert await client.is_server_live() is True
            assert await client.is_server_ready() is True
            assert await client.is_model_ready(MODEL) is True
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await client.is_model_ready("no-such-model")
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND

            response = await client.infer(sample_request("kserve-grpc"))
            assert response.id == "kserve-grpc" and response.model_name == MODEL
            assert_same_as_predict(response, predicted)

        async with grpc.aio.insecure_channel(served.grpc) as channel:
            stub = GRPCInferenceServiceStub(channel)
            server = await stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=CALL_TIMEOUT_S)
            model = await stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL), timeout=CALL_TIMEOUT_S)
        assert server.name == "dyhead-serve" and "binary_tensor_data" in server.extensions
        assert model.name == MODEL
        assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("image", "BYTES", [-1])]
        assert {t.name: t.datatype for t in model.outputs} == OUTPUTS

    asyncio.run(run())
