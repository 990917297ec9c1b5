"""Overload and lifecycle: a full queue answers 503 + Retry-After, a slow answer 504, a loading
or failed model 503; the service keeps serving afterwards."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from dyhead_serve.server import ServerSettings, create_app
from tests.server.conftest import photo_bytes, wait_ready

IMAGE = {"file": ("photo.png", photo_bytes(seed=9), "image/png")}


class GatedBackend:
    """The real backend, held at a gate before each call (what a slow GPU looks like)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        for name in ("name", "model_name", "input_spec", "class_names", "decoder", "device", "precision"):
            setattr(self, name, getattr(inner, name))
        self.gate = threading.Event()
        self.entered = threading.Event()

    def infer(self, images, image_sizes):
        self.entered.set()
        self.gate.wait(30)
        return self.inner.infer(images, image_sizes)


@pytest.fixture
def gated(served_backend):
    backend = GatedBackend(served_backend)
    yield backend
    backend.gate.set()


def post_in_thread(client: TestClient, results: list) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.append(client.post("/v1/detect", files=IMAGE)))
    thread.start()
    return thread


def test_full_queue_answers_503_with_retry_after(gated):
    settings = ServerSettings(max_queue=1, max_batch_size=1, warmup=False)
    with TestClient(create_app(settings, backend=gated)) as client:
        wait_ready(client)
        results: list = []
        first = post_in_thread(client, results)
        assert gated.entered.wait(10)
        refused = client.post("/v1/detect", files=IMAGE)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "queue_full"
        assert int(refused.headers["retry-after"]) >= 1
        gated.gate.set()
        first.join(30)
        assert results[0].status_code == 200
        assert client.post("/v1/detect", files=IMAGE).status_code == 200
        assert 'dyhead_rejected_requests_total{reason="queue_full"} 1.0' in client.get("/metrics").text


def test_slow_answer_times_out_with_504(gated):
    # Long enough that the request after the gate opens is answered in time on a loaded machine.
    settings = ServerSettings(request_timeout_s=1.0, warmup=False)
    with TestClient(create_app(settings, backend=gated)) as client:
        wait_ready(client)
        timed_out = client.post("/v1/detect", files=IMAGE)
        assert timed_out.status_code == 504 and timed_out.json()["error"]["code"] == "timeout"
        gated.gate.set()
        assert client.post("/v1/detect", files=IMAGE).status_code == 200
        assert client.get("/metrics").text.count("dyhead_images_in_flight 0.0") == 1


def test_not_ready_while_loading(served_backend):
    release = threading.Event()

    def slow_load(settings):
        release.wait(30)
        return served_backend

    with TestClient(create_app(ServerSettings(warmup=True), load=slow_load)) as client:
        assert client.get("/healthz").status_code == 200
        loading = client.get("/readyz")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        assert client.get("/v2/health/ready").status_code == 400
        refused = client.post("/v1/detect", files=IMAGE)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"
        assert "retry-after" in refused.headers
        release.set()
        wait_ready(client)
        assert client.post("/v1/detect", files=IMAGE).status_code == 200


def test_failed_load_is_reported():
    failures: list[BaseException] = []

    def broken_load(settings):
        raise FileNotFoundError("exported/: no model.json")

    app = create_app(ServerSettings(), load=broken_load, on_load_failure=failures.append)
    with TestClient(app) as client:
        deadline = time.monotonic() + 10
        while client.get("/readyz").json()["status"] != "failed" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get("/healthz").status_code == 503
        refused = client.post("/v1/detect", files=IMAGE)
        assert refused.status_code == 503 and "no model.json" in refused.json()["error"]["message"]
    assert isinstance(failures[0], FileNotFoundError)
