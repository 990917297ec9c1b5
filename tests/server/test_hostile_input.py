"""Hostile requests, each class of input named, each answered with its documented 4xx (never a
500), and the service still serving afterwards. Connection-level attacks (trickling, disconnects,
floods) are in test_hostile_connections.py; config and model.json files in tests/config and
tests/runtime."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from dyhead_serve.data.sample_image import synthetic_photo
from tests.pipeline.hostile_images import ENDLESS_EPS, many_scan_jpeg
from tests.server.conftest import photo_bytes
from tests.server.test_bad_input import assert_good_request_succeeds

MODEL = "dyhead_r50_atss_fpn_1x"
INFER = f"/v2/models/{MODEL}/infer"
PHOTO = photo_bytes(seed=5)
IMAGE = {"file": ("ok.png", PHOTO, "image/png")}
LONG_NUMBER = "1" * 5001  # more digits than int() converts (4300)


def v2_binary(elements: list[bytes], count: int | None = None, **header_fields: object) -> dict:
    """Request kwargs for a v2 infer with the binary tensor extension."""
    blob = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    tensor = {
        "name": "image",
        "shape": [len(elements) if count is None else count],
        "datatype": "BYTES",
        "parameters": {"binary_data_size": len(blob)},
        **header_fields,
    }
    header = json.dumps({"inputs": [tensor]}).encode()
    return {
        "content": header + blob,
        "headers": {
            "Inference-Header-Content-Length": str(len(header)),
            "content-type": "application/octet-stream",
        },
    }


# -- odd numerals and booleans ----------------------------------------------------------------


def query(**params: str) -> tuple[str, dict]:
    return "/v1/detect", {"files": IMAGE, "params": params}


def form(**fields: str) -> tuple[str, dict]:
    return "/v1/detect", {"files": IMAGE, "data": fields}


def v1_json(**options: object) -> tuple[str, dict]:
    return "/v1/detect", {"json": {"images": [{"data": "aGk="}], **options}}


def v2_json(shape: list, **request: object) -> tuple[str, dict]:
    tensor = {"name": "image", "shape": shape, "datatype": "BYTES", "data": ["aGk="]}
    return INFER, {"json": {"inputs": [tensor], **request}}


def raw(path: str, content: bytes, **headers: str) -> tuple[str, dict]:
    return path, {"content": content, "headers": {k.replace("_", "-"): v for k, v in headers.items()}}


HEADER_LENGTH = "Inference_Header_Content_Length"
JSON = "application/json"
BIG_ID_JSON = b'{"images": [{"data": "aGk="}], "classes": [' + b"9" * 4300 + b"]}"

# (id, (path, request kwargs), status, error code; None under /v2, whose errors are plain strings)
NUMERALS = [
    ("superscript-class-id", query(classes="\u00b2"), 422, "invalid_option"),
    ("arabic-indic-class-id", query(classes="\u0663"), 422, "invalid_option"),
    ("5001-digit-class-id", query(classes=LONG_NUMBER), 422, "invalid_option"),
    ("5001-digit-class-id-form", form(classes=LONG_NUMBER), 422, "invalid_option"),
    ("too-many-classes", form(classes=",".join(["0"] * 5000)), 422, "invalid_option"),
    ("json-class-true", v1_json(classes=[True]), 422, "invalid_request"),
    ("json-max-detections-true", v1_json(max_detections=True), 422, "invalid_request"),
    ("json-threshold-false", v1_json(score_threshold=False), 422, "invalid_request"),
    ("json-4300-digit-class-id", raw("/v1/detect", BIG_ID_JSON, content_type=JSON), 422, "invalid_option"),
    ("v2-header-length-superscript", raw(INFER, b"{}", **{HEADER_LENGTH: "\u00b2"}), 400, None),
    ("v2-header-length-5001-digits", raw(INFER, b"{}", **{HEADER_LENGTH: LONG_NUMBER}), 400, None),
    ("v2-shape-true", v2_json([True]), 400, None),
    ("v2-binary-size-true", (INFER, v2_binary([b"x"], parameters={"binary_data_size": True})), 400, None),
    ("v2-parameter-boolean", v2_json([1], parameters={"max_detections": True}), 422, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_", "status", "code"), [n[1:] for n in NUMERALS], ids=[n[0] for n in NUMERALS]
)
def test_odd_numerals_are_4xx(client, request_, status, code):
    path, kwargs = request_
    if "headers" in kwargs:  # httpx sends str headers as ASCII: the superscript goes as its latin-1 byte
        kwargs = {**kwargs, "headers": {k: v.encode("latin-1") for k, v in kwargs["headers"].items()}}
    response = client.post(path, **kwargs)
    assert response.status_code == status, response.text
    if code is not None:
        assert response.json()["error"]["code"] == code
    else:
        assert isinstance(response.json()["error"], str)
    assert len(response.text) < 2000  # a huge number is not echoed back
    assert_good_request_succeeds(client)


# -- images that cannot be represented in 8 bits ----------------------------------------------


def encoded(array: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format)
    return buffer.getvalue()


def test_16_bit_grayscale_png_is_detected_like_its_8_bit_twin(client):
    gray = np.asarray(Image.fromarray(synthetic_photo(120, 160, seed=7)).convert("L"))
    twin = client.post("/v1/detect", files={"file": ("8.png", encoded(gray, "PNG"))}).json()["results"][0]
    wide = client.post("/v1/detect", files={"file": ("16.png", encoded(gray.astype(np.uint16) * 257, "PNG"))})
    assert wide.status_code == 200, wide.text
    assert wide.json()["results"][0]["detections"] == twin["detections"]


def test_floating_point_tiff_is_a_clear_400(client):
    floats = encoded(np.full((64, 64), 0.5, np.float32), "TIFF")
    response = client.post("/v1/detect", files={"file": ("f.tiff", floats, "image/tiff")})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_image"
    assert "floating-point" in response.json()["error"]["message"]


# -- unexpected failures: consistent errors --------------------------------------------------


class FailingBackend:
    """The real backend's description, with an ``infer`` that fails as a broken GPU would."""

    def __init__(self, inner) -> None:
        for name in ("name", "model_name", "input_spec", "class_names", "decoder", "device", "precision"):
            setattr(self, name, getattr(inner, name))

    def infer(self, images, image_sizes):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_a_500_is_json_with_cors_headers(served_backend, caplog):
    from fastapi.testclient import TestClient

    from dyhead_serve.server import ServerSettings, create_app
    from tests.server.conftest import wait_ready

    origin = "https://app.example.com"
    settings = ServerSettings(warmup=False, cors_origins=origin)
    with TestClient(create_app(settings, backend=FailingBackend(served_backend))) as client:
        wait_ready(client)
        response = client.post("/v1/detect", files=IMAGE, headers={"Origin": origin})
        assert response.status_code == 500
        assert response.json() == {"error": {"code": "internal_error", "message": "internal server error"}}
        assert response.headers["access-control-allow-origin"] == origin
        v2 = client.post(INFER, json=v2_json([1])[1]["json"], headers={"Origin": origin})
        assert v2.status_code in (400, 500) and v2.headers["access-control-allow-origin"] == origin
        assert 'status="500"' in client.get("/metrics").text
    assert any("unhandled error" in r.getMessage() and r.exc_info for r in caplog.records)


# -- /docs without internet ------------------------------------------------------------------


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_their_scripts_from_this_server(client, page):
    html = client.get(page).text
    assert "://" not in html  # no CDN, no font service, no favicon elsewhere
    assets = [part.split('"')[0] for part in html.split('="/docs-assets/')[1:]]
    assert assets, html
    for asset in assets:
        response = client.get(f"/docs-assets/{asset}")
        assert response.status_code == 200 and len(response.content) > 100, asset


def test_postscript_upload_is_400_and_starts_no_process(client, monkeypatch):
    import subprocess

    started: list[object] = []
    monkeypatch.setattr(subprocess, "Popen", lambda *args, **kwargs: started.append(args))
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", "gs")  # as on a host with Ghostscript
    for _ in range(2):
        response = client.post("/v1/detect", files={"file": ("loop.jpg", ENDLESS_EPS, "image/jpeg")})
        assert response.status_code == 400, response.text
        assert "not an image in a format we decode" in response.json()["error"]["message"]
    assert started == []
    assert_good_request_succeeds(client)


def test_progressive_jpeg_scan_bomb_is_413_at_once(client):
    bomb = many_scan_jpeg(200, 200, extra_scans=300)  # 1.8 MB, far under the upload limit
    response = client.post("/v1/detect", files={"file": ("scans.jpg", bomb, "image/jpeg")})
    assert response.status_code == 413, response.text
    assert "scans" in response.json()["error"]["message"]
    assert_good_request_succeeds(client)
