"""Every kind of malformed request gets its documented status and a JSON error, and the next
good request is still answered."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.server.conftest import photo_bytes, wait_ready


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels in a few dozen bytes (a decompression bomb's
    header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def upload(data: bytes, content_type: str = "image/png", name: str = "x.png") -> dict:
    return {"files": {"file": (name, data, content_type)}}


GOOD_PHOTO = photo_bytes(seed=5)
JPEG = photo_bytes(seed=6, image_format="JPEG")
MULTIPART = "multipart/form-data"


def raw(content: bytes, content_type: str | None = None) -> dict:
    return {"content": content, "headers": {"content-type": content_type} if content_type else {}}


def with_photo(**extra: dict) -> dict:
    return {**upload(GOOD_PHOTO), **extra}


# (id, request kwargs for client.post("/v1/detect", ...), status, error code)
MALFORMED = [
    ("not-an-image", upload(b"hello, this is text"), 400, "invalid_image"),
    ("zero-bytes", upload(b""), 400, "invalid_image"),
    ("truncated-png", upload(GOOD_PHOTO[: len(GOOD_PHOTO) // 2]), 400, "invalid_image"),
    ("truncated-jpeg", upload(JPEG[: len(JPEG) // 2], "image/jpeg", "x.jpg"), 400, "invalid_image"),
    ("over-pixel-limit", upload(png_header_only(9000, 9000)), 413, "image_too_large"),
    ("decompression-bomb", upload(png_header_only(100_000, 100_000)), 413, "image_too_large"),
    ("too-many-files", {"files": [("files", ("a.png", GOOD_PHOTO, "image/png"))] * 5}, 413, "too_many_files"),
    ("text-part", upload(b"plain words", "text/plain", "notes.txt"), 415, "unsupported_media_type"),
    ("text-body", raw(b"hello", "text/plain"), 415, "unsupported_media_type"),
    ("no-content-type", raw(b"hello"), 415, "unsupported_media_type"),
    ("urlencoded-form", {"data": {"file": "not a file"}}, 415, "unsupported_media_type"),
    ("other-file-field", {"files": {"other": ("a", b"", "image/png")}}, 422, "invalid_request"),
    ("empty-multipart", raw(b"--b--\r\n", MULTIPART + "; boundary=b"), 422, "missing_image"),
    ("bad-multipart", raw(b"garbage", MULTIPART), 400, "invalid_multipart"),
    ("file-as-text-field", {"files": {"file": (None, b"not a file")}}, 422, "invalid_request"),
    ("threshold-not-a-number", with_photo(params={"score_threshold": "abc"}), 422, "invalid_request"),
    ("threshold-out-of-range", with_photo(data={"score_threshold": "1.5"}), 422, "invalid_option"),
    ("zero-max-detections", with_photo(params={"max_detections": 0}), 422, "invalid_request"),
    ("unknown-class", with_photo(params={"classes": "unicorn"}), 422, "invalid_option"),
    ("class-id-out-of-range", with_photo(params={"classes": "7"}), 422, "invalid_option"),
    ("unknown-form-field", with_photo(data={"colour": "red"}), 422, "invalid_request"),
    ("malformed-json", raw(b'{"images": [', "application/json"), 400, "invalid_json"),
    ("json-without-images", {"json": {"score_threshold": 0.5}}, 422, "invalid_request"),
    ("json-empty-images", {"json": {"images": []}}, 422, "invalid_request"),
    ("json-bad-base64", {"json": {"images": [{"data": "%%%not base64%%%"}]}}, 400, "invalid_base64"),
    ("json-not-an-image", {"json": {"images": [{"data": "aGVsbG8="}]}}, 400, "invalid_image"),
    ("json-too-many", {"json": {"images": [{"data": "aGVsbG8="}] * 5}}, 413, "too_many_files"),
    ("json-unknown-key", {"json": {"images": [{"data": "aGVsbG8="}], "colour": 1}}, 422, "invalid_request"),
]


def assert_good_request_succeeds(client: TestClient) -> None:
    response = client.post("/v1/detect", files={"file": ("ok.png", GOOD_PHOTO, "image/png")})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["detections"]


@pytest.mark.parametrize(
    ("kwargs", "status", "code"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_request_then_a_good_one(client, kwargs, status, code):
    response = client.post("/v1/detect", **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert_good_request_succeeds(client)


def test_wrong_method_and_unknown_path_are_json_errors(client):
    assert client.get("/v1/detect").json()["error"]["code"] == "method_not_allowed"
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


@pytest.fixture(scope="module")
def small_limits(served_backend) -> Iterator[TestClient]:
    """An app with a 50 KiB body limit, an API key and one CORS origin."""
    from dyhead_serve.server import ServerSettings, create_app

    settings = ServerSettings(
        max_upload_mb=50 / 1024, api_key="s3cret", cors_origins="https://app.example.com", warmup=False
    )
    with TestClient(create_app(settings, backend=served_backend)) as test_client:
        wait_ready(test_client)
        yield test_client


KEY = {"X-API-Key": "s3cret"}


def test_upload_over_the_size_limit_is_refused_while_reading(small_limits):
    big = b"\0" * 80_000
    declared = small_limits.post("/v1/detect", files={"file": ("big.png", big, "image/png")}, headers=KEY)
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced as bytes arrive
        for _ in range(20):
            yield b"\0" * 8192

    streamed = small_limits.post(
        "/v1/detect", content=chunks(), headers={**KEY, "content-type": "application/json"}
    )
    assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "payload_too_large"
    ok = small_limits.post("/v1/detect", files={"file": ("ok.png", GOOD_PHOTO, "image/png")}, headers=KEY)
    assert ok.status_code == 200, ok.text


def test_api_key(small_limits):
    image = {"file": ("ok.png", GOOD_PHOTO, "image/png")}
    for headers in ({}, {"X-API-Key": "wrong"}):
        refused = small_limits.post("/v1/detect", files=image, headers=headers)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    assert small_limits.get("/v1/models").status_code == 401
    assert small_limits.get("/v2/models/dyhead_r50_atss_fpn_1x").status_code == 401
    assert small_limits.get("/v1/models", headers=KEY).status_code == 200
    # probes, metrics and the demo page stay open
    for path in ("/healthz", "/readyz", "/metrics", "/", "/v2/health/ready"):
        assert small_limits.get(path).status_code == 200, path
    assert small_limits.post("/v1/detect", files=image, headers=KEY).status_code == 200


def test_cors(small_limits):
    preflight = small_limits.options(
        "/v1/detect",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "X-API-Key",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
    other = small_limits.get("/healthz", headers={"Origin": "https://evil.example.org"})
    assert "access-control-allow-origin" not in other.headers
