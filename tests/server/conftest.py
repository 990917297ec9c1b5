"""Server fixtures: the tiny detector exported once per session, apps and clients on it."""

from __future__ import annotations

import io
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dyhead_serve.data.sample_image import synthetic_photo
from tests.conftest import TINY_OVERRIDES

# The tiny model at a smaller input size still: every server test runs it many times.
SERVER_OVERRIDES = [*TINY_OVERRIDES, "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192"]


def encode(image: np.ndarray, image_format: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=image_format, **params)
    return buffer.getvalue()


def photo_bytes(height: int = 120, width: int = 160, seed: int = 0, image_format: str = "PNG") -> bytes:
    return encode(synthetic_photo(height, width, seed=seed), image_format)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    server: Any  # uvicorn.Server: set should_exit to shut it down as SIGTERM does
    thread: threading.Thread


@contextmanager
def running_server(app, settings) -> Iterator[LiveServer]:
    """``app`` served as ``dyhead-serve serve`` serves it (uvicorn with our connection protocol and
    limits), on a thread, on a free loopback port, once it is ready."""
    import uvicorn

    from dyhead_serve.server.connections import uvicorn_options

    options = {**uvicorn_options(settings), "host": "127.0.0.1", "port": free_port()}
    server = uvicorn.Server(uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{options['port']}"
    wait_url_ready(url, timeout=60.0)
    try:
        yield LiveServer(url, server, thread)
    finally:
        server.should_exit = True
        thread.join(60)


@contextmanager
def live_server(app, settings) -> Iterator[str]:
    """The URL of :func:`running_server`."""
    with running_server(app, settings) as live:
        yield live.url


def wait_url_ready(url: str, timeout: float = 120.0, process: subprocess.Popen | None = None) -> None:
    """Poll ``url``/readyz on loopback until it answers 200; fail if ``process`` exits first."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}: {process.communicate()[1]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("the server did not become ready")


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get("/readyz")
        if response.status_code == 200:
            return
        assert response.json()["status"] in ("loading", "ready"), response.json()
        time.sleep(0.05)
    raise AssertionError("the server did not become ready")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> Path:
    """``dyhead-export onnx`` output (model.onnx + model.json) of the tiny detector."""
    from dyhead_serve.export.onnx_export import export_onnx
    from dyhead_serve.runtime.loader import load_torch_backend

    backend = load_torch_backend(
        "dyhead_r50_atss_fpn_1x", tiny_weights, device="cpu", overrides=SERVER_OVERRIDES
    )
    out = tmp_path_factory.mktemp("served_model")
    export_onnx(backend, out)
    return out


@pytest.fixture(scope="session")
def served_backend(tiny_model_dir: Path):
    """The exported tiny detector in ONNX Runtime, shared by the apps that do not load their own."""
    from dyhead_serve.runtime.loader import load_backend
    from dyhead_serve.runtime.options import ModelOptions

    return load_backend(ModelOptions(tiny_model_dir, device="cpu"))


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path) -> Iterator[TestClient]:
    """A ready app that loads the exported model itself, as `dyhead-serve serve --model DIR` does."""
    from dyhead_serve.server import ServerSettings, create_app

    settings = ServerSettings(model=str(tiny_model_dir), device="cpu", max_batch_delay_ms=20, max_files=4)
    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client
