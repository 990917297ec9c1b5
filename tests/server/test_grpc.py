"""KServe v2 over gRPC, driven by Triton's own gRPC client (tritonclient) against a live server
on loopback: the same answers as the HTTP v1 route (difference 0), the same limits and key, the
health service, status codes, metrics and a graceful stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dyhead_serve.server import ServerSettings, create_app
from dyhead_serve.server.errors import ApiError
from dyhead_serve.server.grpc.servicer import grpc_code
from tests.server.conftest import free_port, photo_bytes, running_server, wait_url_ready
from tests.server.test_overload import GatedBackend
from tests.server.test_process import REPO

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402 (after the importorskip)
from tritonclient.utils import InferenceServerException  # noqa: E402

MODEL = "dyhead_r50_atss_fpn_1x"
KEY = "grpc-test-key"
OUTPUT_NAMES = ["num_detections", "boxes", "scores", "class_ids", "labels", "image_sizes"]


@dataclass
class Served:
    http: str  # http://127.0.0.1:PORT
    grpc: str  # 127.0.0.1:PORT


@pytest.fixture(scope="module")
def served(served_backend) -> Iterator[Served]:
    settings = ServerSettings(
        grpc_port=free_port(), max_batch_delay_ms=20, max_files=4, grpc_max_message_mb=1.0
    )
    with running_server(create_app(settings, backend=served_backend), settings) as live:
        yield Served(live.url, f"127.0.0.1:{settings.grpc_port}")


@pytest.fixture(scope="module")
def guarded(served_backend) -> Iterator[Served]:
    """A server with an API key."""
    settings = ServerSettings(grpc_port=free_port(), api_key=KEY, max_batch_delay_ms=5)
    with running_server(create_app(settings, backend=served_backend), settings) as live:
        yield Served(live.url, f"127.0.0.1:{settings.grpc_port}")


def image_input(*images: bytes):
    tensor = tritonclient_grpc.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object))
    return tensor


def v1_detections(url: str, images: list[bytes], **params) -> list[list[dict]]:
    files = [("files", (f"{i}.png", data)) for i, data in enumerate(images)]
    response = httpx.post(f"{url}/v1/detect", files=files, params=params, timeout=60)
    assert response.status_code == 200, response.text
    return [result["detections"] for result in response.json()["results"]]


def assert_same_as_v1(result, expected: list[list[dict]]) -> None:
    """Every output of a Triton result equals JSON detections (of /v1 or predict) exactly."""
    counts = [len(d) for d in expected]
    assert result.as_numpy("num_detections").tolist() == counts
    scores, boxes = result.as_numpy("scores"), result.as_numpy("boxes")
    class_ids, labels = result.as_numpy("class_ids"), result.as_numpy("labels")
    assert scores.dtype == np.float32 and boxes.dtype == np.float32 and class_ids.dtype == np.int64
    assert scores.shape == (len(expected), max(counts))
    for n, detections in enumerate(expected):
        m = counts[n]
        assert scores[n, :m].tolist() == [d["score"] for d in detections]  # difference 0
        assert boxes[n, :m].reshape(-1).tolist() == [v for d in detections for v in d["box"]]
        assert class_ids[n, :m].tolist() == [d["class_id"] for d in detections]
        assert [label.decode() for label in labels[n, :m]] == [d["label"] for d in detections]
        assert set(class_ids[n, m:].tolist()) <= {-1} and set(labels[n, m:].tolist()) <= {b""}


def test_health_metadata_and_config(served):
    client = tritonclient_grpc.InferenceServerClient(served.grpc)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, model_version="1")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "dyhead-serve" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata(MODEL, as_json=True)
    assert meta["versions"] == ["1"] and meta["platform"] == "dyhead-serve_onnxruntime"
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": ["-1"]}]
    assert [o["name"] for o in meta["outputs"]] == OUTPUT_NAMES
    config = client.get_model_config(MODEL, model_version="1", as_json=True)["config"]
    assert config["name"] == MODEL and config["input"][0]["data_type"] == "TYPE_STRING"
    assert {o["name"]: o["data_type"] for o in config["output"]}["scores"] == "TYPE_FP32"
    # The HTTP side describes the model the same way.
    assert httpx.get(f"{served.http}/v2/models/{MODEL}/config").json()["output"][2]["name"] == "scores"
    index = client.get_model_repository_index(as_json=True)["models"]
    assert index == [{"name": MODEL, "version": "1", "state": "READY"}]


def test_infer_matches_v1_exactly(served):
    images = [photo_bytes(120, 160, seed=1), photo_bytes(100, 100, seed=2)]
    client = tritonclient_grpc.InferenceServerClient(served.grpc)
    result = client.infer(MODEL, [image_input(*images)], request_id="r-7")
    response = result.get_response(as_json=True)
    assert response["id"] == "r-7" and response["model_name"] == MODEL
    assert_same_as_v1(result, v1_detections(served.http, images))
    assert result.as_numpy("image_sizes").tolist() == [[120, 160], [100, 100]]


def test_infer_parameters_and_output_selection(served):
    images = [photo_bytes(seed=3)]
    client = tritonclient_grpc.InferenceServerClient(served.grpc)
    wanted = [tritonclient_grpc.InferRequestedOutput(name) for name in OUTPUT_NAMES]
    result = client.infer(
        MODEL,
        [image_input(*images)],
        model_version="1",
        outputs=wanted,
        parameters={"score_threshold": 0.05, "max_detections": 5, "classes": "class_1,class_4"},
    )
    expected = v1_detections(
        served.http, images, score_threshold=0.05, max_detections=5, classes="class_1,class_4"
    )
    assert_same_as_v1(result, expected)
    only = client.infer(
        MODEL, [image_input(*images)], outputs=[tritonclient_grpc.InferRequestedOutput("scores")]
    )
    assert [o["name"] for o in only.get_response(as_json=True)["outputs"]] == ["scores"]


def test_bytes_contents_as_well_as_raw_input_contents(served):
    """Images in ``contents.bytes_contents`` (what tritonclient never sends, other clients do),
    with Triton's own messages, which are wire-compatible with ours."""
    images = [photo_bytes(seed=4), photo_bytes(90, 130, seed=5)]
    request = service_pb2.ModelInferRequest(model_name=MODEL, id="contents")
    tensor = request.inputs.add(name="image", datatype="BYTES", shape=[2])
    tensor.contents.bytes_contents.extend(images)
    with grpc.insecure_channel(served.grpc) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    result = tritonclient_grpc.InferResult(response)
    assert response.id == "contents" and response.model_version == "1"
    assert_same_as_v1(result, v1_detections(served.http, images))


def status_of(call) -> grpc.StatusCode:
    with pytest.raises(InferenceServerException) as raised:
        call()
    status = raised.value.status()
    return getattr(grpc.StatusCode, status.removeprefix("StatusCode."))


def test_status_codes(served):
    client = tritonclient_grpc.InferenceServerClient(served.grpc)
    image = image_input(photo_bytes(seed=6))
    assert status_of(lambda: client.get_model_metadata("nope")) == grpc.StatusCode.NOT_FOUND
    assert status_of(lambda: client.infer("nope", [image])) == grpc.StatusCode.NOT_FOUND
    assert status_of(lambda: client.infer(MODEL, [image], model_version="2")) == grpc.StatusCode.NOT_FOUND
    assert status_of(lambda: client.get_model_config(MODEL, "2")) == grpc.StatusCode.NOT_FOUND
    not_an_image = image_input(b"definitely not an image")
    assert status_of(lambda: client.infer(MODEL, [not_an_image])) == grpc.StatusCode.INVALID_ARGUMENT
    five = image_input(*[photo_bytes(seed=i) for i in range(5)])  # max_files is 4
    assert status_of(lambda: client.infer(MODEL, [five])) == grpc.StatusCode.RESOURCE_EXHAUSTED
    bad_option = {"score_threshold": 2.0}
    assert (
        status_of(lambda: client.infer(MODEL, [image], parameters=bad_option))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    unknown = [tritonclient_grpc.InferRequestedOutput("masks")]
    assert (
        status_of(lambda: client.infer(MODEL, [image], outputs=unknown)) == grpc.StatusCode.INVALID_ARGUMENT
    )
    # grpc_max_message_mb is 1: a larger message is refused by gRPC itself.
    big = image_input(np.random.default_rng(0).bytes(1_200_000))
    assert status_of(lambda: client.infer(MODEL, [big])) == grpc.StatusCode.RESOURCE_EXHAUSTED
    # A client deadline shorter than the inference.
    assert (
        status_of(lambda: client.infer(MODEL, [image], client_timeout=0.001))
        == grpc.StatusCode.DEADLINE_EXCEEDED
    )
    # The server answers after all of these.
    assert client.infer(MODEL, [image]).as_numpy("num_detections").shape == (1,)


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "invalid_image", grpc.StatusCode.INVALID_ARGUMENT),
        (401, "unauthorized", grpc.StatusCode.UNAUTHENTICATED),
        (404, "not_found", grpc.StatusCode.NOT_FOUND),
        (413, "too_many_pixels", grpc.StatusCode.RESOURCE_EXHAUSTED),
        (422, "invalid_option", grpc.StatusCode.INVALID_ARGUMENT),
        (503, "queue_full", grpc.StatusCode.RESOURCE_EXHAUSTED),
        (503, "not_ready", grpc.StatusCode.UNAVAILABLE),
        (503, "shutting_down", grpc.StatusCode.UNAVAILABLE),
        (504, "timeout", grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
def test_every_http_error_class_has_a_grpc_code(status, code, expected):
    assert grpc_code(ApiError(status, code, "message")) is expected


def test_api_key_in_metadata(guarded):
    client = tritonclient_grpc.InferenceServerClient(guarded.grpc)
    # Server-level probes stay open, as on HTTP; model calls need the key.
    assert client.is_server_live() and client.is_server_ready()
    assert status_of(lambda: client.is_model_ready(MODEL)) == grpc.StatusCode.UNAUTHENTICATED
    wrong = {"x-api-key": "nope"}
    assert (
        status_of(lambda: client.get_model_metadata(MODEL, headers=wrong)) == grpc.StatusCode.UNAUTHENTICATED
    )
    image = image_input(photo_bytes(seed=8))
    assert status_of(lambda: client.infer(MODEL, [image])) == grpc.StatusCode.UNAUTHENTICATED
    key = {"x-api-key": KEY}
    assert client.is_model_ready(MODEL, headers=key)
    assert client.infer(MODEL, [image], headers=key).as_numpy("num_detections").shape == (1,)
    # HTTP: a probe without the key is 401, not "not ready".
    probe = httpx.get(f"{guarded.http}/v2/models/{MODEL}/ready")
    assert probe.status_code == 401 and probe.headers["www-authenticate"] == "X-API-Key"
    versioned = httpx.get(f"{guarded.http}/v2/models/{MODEL}/versions/1/ready")
    assert versioned.status_code == 401


def test_health_service_and_metrics(served):
    with grpc.insecure_channel(served.grpc) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    client = tritonclient_grpc.InferenceServerClient(served.grpc)
    client.infer(MODEL, [image_input(photo_bytes(seed=9))])
    metrics = httpx.get(f"{served.http}/metrics").text
    assert 'dyhead_grpc_requests_total{code="OK",method="ModelInfer"}' in metrics
    assert 'dyhead_grpc_requests_total{code="NOT_FOUND",method="ModelMetadata"}' in metrics
    # gRPC images go through the same service: counted with HTTP's.
    assert "dyhead_images_total" in metrics


def test_stop_finishes_calls_in_progress_and_refuses_new_ones(served_backend):
    gated = GatedBackend(served_backend)
    settings = ServerSettings(grpc_port=free_port(), warmup=False, max_batch_size=1)
    address = f"127.0.0.1:{settings.grpc_port}"
    answers: list = []
    try:
        with running_server(create_app(settings, backend=gated), settings) as live:
            client = tritonclient_grpc.InferenceServerClient(address)
            sender = threading.Thread(
                target=lambda: answers.append(client.infer(MODEL, [image_input(photo_bytes(seed=10))]))
            )
            sender.start()
            assert gated.entered.wait(30)
            live.server.should_exit = True  # what SIGTERM does
            deadline = time.monotonic() + 10
            refused = None
            while refused is None and time.monotonic() < deadline:
                try:
                    tritonclient_grpc.InferenceServerClient(address).is_server_live(client_timeout=1)
                    time.sleep(0.05)
                except InferenceServerException as exc:
                    refused = exc
            assert refused is not None, "new calls were still answered during shutdown"
            gated.gate.set()
            sender.join(30)
    finally:
        gated.gate.set()
    assert answers and answers[0].as_numpy("num_detections").shape == (1,)


def test_serve_process_speaks_grpc_and_stops_on_sigterm(tiny_model_dir):
    """``dyhead-serve serve`` as a process: gRPC on its port beside HTTP, exit 0 on SIGTERM."""
    http_port, grpc_port = free_port(), free_port()
    env = {**os.environ, "DYHEAD_SERVE_GRPC_PORT": str(grpc_port)}
    command = ["serve", "--model", str(tiny_model_dir), "--device", "cpu", "--port", str(http_port)]
    process = subprocess.Popen(
        [sys.executable, "-m", "dyhead_serve.cli", *command],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_url_ready(f"http://127.0.0.1:{http_port}", process=process)
        client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert client.is_server_ready() and client.is_model_ready(MODEL)
        result = client.infer(MODEL, [image_input(photo_bytes(seed=15))])
        assert result.as_numpy("num_detections").shape == (1,)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        assert "gRPC server stopped" in process.communicate()[1]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_exits_2_when_the_grpc_port_is_taken(tiny_model_dir):
    """A gRPC port in use stops the server at start-up with an error, not a silent exit 0."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        grpc_port = taken.getsockname()[1]
        env = {**os.environ, "DYHEAD_SERVE_GRPC_PORT": str(grpc_port)}
        command = ["serve", "--model", str(tiny_model_dir), "--device", "cpu", "--port", str(free_port())]
        done = subprocess.run(
            [sys.executable, "-m", "dyhead_serve.cli", *command],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"cannot serve gRPC on 127.0.0.1:{grpc_port}" in done.stderr


def test_grpc_settings(monkeypatch):
    from pydantic import ValidationError

    monkeypatch.delenv("DYHEAD_SERVE_GRPC_PORT", raising=False)  # the test suite turns it off
    settings = ServerSettings()
    assert settings.grpc_port == 8001 and settings.grpc_max_message_bytes == 20 * 2**20
    monkeypatch.setenv("DYHEAD_SERVE_GRPC_PORT", "0")
    assert ServerSettings().grpc_port == 0
    with pytest.raises(ValidationError):
        ServerSettings(grpc_port=70000)
    with pytest.raises(ValidationError):
        ServerSettings(grpc_max_message_mb=0)


def test_both_transports_answer_what_predict_prints(served, tiny_model_dir, tmp_path, capsys):
    """tritonclient over gRPC and over HTTP against ``dyhead-serve predict`` on the same files."""
    import tritonclient.http as tritonclient_http

    from dyhead_serve.cli import main as cli_main

    paths = []
    for i, (height, width) in enumerate([(120, 160), (150, 110)]):
        path = tmp_path / f"{i}.png"
        path.write_bytes(photo_bytes(height, width, seed=30 + i))
        paths.append(path)
    assert cli_main(["predict", "--model", str(tiny_model_dir), "--device", "cpu", *map(str, paths)]) == 0
    printed = {entry["file"]: entry["detections"] for entry in json.loads(capsys.readouterr().out)}
    expected = [printed[str(path)] for path in paths]
    assert all(expected)
    images = [path.read_bytes() for path in paths]
    over_grpc = tritonclient_grpc.InferenceServerClient(served.grpc).infer(MODEL, [image_input(*images)])
    assert_same_as_v1(over_grpc, expected)
    tensor = tritonclient_http.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object), binary_data=True)
    http_client = tritonclient_http.InferenceServerClient(served.http.removeprefix("http://"))
    assert_same_as_v1(http_client.infer(MODEL, [tensor]), expected)


def test_one_admission_queue_for_both_transports(served_backend):
    """An HTTP request holding the only queue slot: a gRPC call is refused RESOURCE_EXHAUSTED with
    a retry-after trailer, then answered once the slot is free."""
    gated = GatedBackend(served_backend)
    settings = ServerSettings(grpc_port=free_port(), warmup=False, max_batch_size=1, max_queue=1)
    image = photo_bytes(seed=16)
    try:
        with running_server(create_app(settings, backend=gated), settings) as live:
            answers: list = []
            holder = threading.Thread(
                target=lambda: answers.append(
                    httpx.post(f"{live.url}/v1/detect", files={"file": ("a.png", image)}, timeout=60)
                )
            )
            holder.start()
            assert gated.entered.wait(30)
            request = service_pb2.ModelInferRequest(model_name=MODEL)
            request.inputs.add(name="image", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
                image
            )
            with grpc.insecure_channel(f"127.0.0.1:{settings.grpc_port}") as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                with pytest.raises(grpc.RpcError) as refused:
                    stub.ModelInfer(request, timeout=30)
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "max_queue" in refused.value.details()
                assert dict(refused.value.trailing_metadata())["retry-after"] == "1"
                gated.gate.set()
                holder.join(30)
                assert answers[0].status_code == 200
                assert stub.ModelInfer(request, timeout=30).outputs[0].name == "num_detections"
    finally:
        gated.gate.set()
