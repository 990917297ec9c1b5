"""A per-request pixel budget, and decoding served request by request: one request of many large
images cannot hold back the others."""

from __future__ import annotations

import base64
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from dyhead_serve.server import ServerSettings, create_app
from dyhead_serve.server.fair_pool import FairPool
from tests.server.conftest import encode, photo_bytes, wait_ready
from tests.server.test_bad_input import png_header_only


def test_fair_pool_serves_owners_in_turn():
    pool = FairPool(1, thread_name_prefix="test")
    gate, running = threading.Event(), threading.Event()
    order: list[str] = []

    def task(label: str) -> None:
        running.set()
        gate.wait(10)
        order.append(label)

    first = pool.submit("a", task, "a0")  # occupies the one thread
    assert running.wait(10)  # a0 is taken before the others are queued
    for i in range(1, 4):
        pool.submit("a", task, f"a{i}")
    pool.submit("b", task, "b0")  # arrives after all of a's tasks
    cancelled = pool.submit("c", task, "c0")
    assert cancelled.cancel()
    gate.set()
    first.result(10)
    pool.shutdown(wait=True)
    assert order == ["a0", "a1", "b0", "a2", "a3"]


def test_an_unused_pool_starts_no_thread():
    before = threading.active_count()
    pool = FairPool(4, thread_name_prefix="idle")
    assert threading.active_count() == before
    pool.shutdown(wait=True)


def test_fair_pool_passes_exceptions_and_refuses_work_after_shutdown():
    pool = FairPool(2, thread_name_prefix="test")
    with pytest.raises(ZeroDivisionError):
        pool.submit("a", lambda: 1 / 0).result(10)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit("a", print)


@pytest.fixture(scope="module")
def small_budget(served_backend):
    # Two 160x120 photos fit (38 400 pixels), three do not.
    settings = ServerSettings(warmup=False, max_files=16, max_request_pixels=40_000)
    with TestClient(create_app(settings, backend=served_backend)) as client:
        wait_ready(client)
        yield client


def test_request_pixel_budget(small_budget):
    photos = [("files", (f"{i}.png", photo_bytes(seed=i), "image/png")) for i in range(3)]
    assert small_budget.post("/v1/detect", files=photos[:2]).status_code == 200
    refused = small_budget.post("/v1/detect", files=photos)
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "too_many_pixels"
    assert "57600 pixels" in refused.json()["error"]["message"]


def test_pixel_budget_is_checked_before_decoding(served_backend):
    # Sixteen 7000x7000 headers: each under max_image_pixels, 784 megapixels together. Refused from
    # the headers alone (these files hold no pixel data: decoding them would fail with 400).
    settings = ServerSettings(warmup=False, max_files=16)
    bombs = [("files", (f"{i}.png", png_header_only(7000, 7000), "image/png")) for i in range(16)]
    with TestClient(create_app(settings, backend=served_backend)) as client:
        wait_ready(client)
        refused = client.post("/v1/detect", files=bombs)
        assert refused.status_code == 413 and refused.json()["error"]["code"] == "too_many_pixels"
        header = base64.b64encode(png_header_only(7000, 7000)).decode()
        tensor = {"name": "image", "shape": [16], "datatype": "BYTES", "data": [header] * 16}
        v2 = client.post("/v2/models/dyhead_r50_atss_fpn_1x/infer", json={"inputs": [tensor]})
        assert v2.status_code == 413 and "max_request_pixels" in v2.json()["error"]


def test_one_request_of_large_images_does_not_hold_back_another(served_backend):
    big = encode(np.zeros((3000, 3000, 3), np.uint8))  # 9 megapixels, a few KB of PNG
    settings = ServerSettings(warmup=False, max_files=16, preprocess_workers=1, max_request_pixels=10**9)
    finished: dict[str, float] = {}
    with TestClient(create_app(settings, backend=served_backend)) as client:
        wait_ready(client)
        service = client.app.state.service

        def send_big() -> None:
            files = [("files", (f"{i}.png", big, "image/png")) for i in range(8)]
            assert client.post("/v1/detect", files=files).status_code == 200
            finished["big"] = time.monotonic()

        sender = threading.Thread(target=send_big)
        sender.start()
        deadline = time.monotonic() + 30
        while service._in_flight == 0 and time.monotonic() < deadline:  # admitted: decoding starts
            time.sleep(0.005)
        small = client.post("/v1/detect", files={"file": ("small.png", photo_bytes(), "image/png")})
        finished["small"] = time.monotonic()
        sender.join(120)
    assert small.status_code == 200
    # First come, first served, the small image waited for all eight large decodes.
    assert finished["small"] < finished["big"]


def test_shutdown_with_a_timeout_is_bounded_by_a_task_that_never_ends():
    pool = FairPool(1, thread_name_prefix="stuck")
    release = threading.Event()
    pool.submit("a", release.wait)  # runs until released: a decode that never ends
    queued = pool.submit("b", print)
    began = time.monotonic()
    assert pool.shutdown(wait=True, timeout=0.5) is False
    assert time.monotonic() - began < 2.0
    assert queued.cancelled()
    release.set()
