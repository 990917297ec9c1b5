"""Server fixtures: the tiny detector exported once per session, apps and clients on it."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

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

    return load_backend(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path) -> Iterator[TestClient]:
    """A ready app that loads the exported model itself, as `dyhead-serve serve --model DIR` does."""
    from dyhead_serve.server import ServerSettings, create_app

    settings = ServerSettings(model=str(tiny_model_dir), device="cpu", max_batch_delay_ms=20, max_files=4)
    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client
