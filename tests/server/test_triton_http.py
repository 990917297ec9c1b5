"""The v2 HTTP surface Triton's HTTP client (tritonclient) calls, against a live server on
loopback: versioned routes, model config, repository index, compressed request bodies (and a
compression bomb), binary outputs; results identical to the v1 route."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from dyhead_serve.server import ServerSettings, create_app
from dyhead_serve.server.content_encoding import inflate
from dyhead_serve.server.errors import ApiError
from tests.server.conftest import live_server, photo_bytes
from tests.server.test_grpc import MODEL, OUTPUT_NAMES, assert_same_as_v1, v1_detections

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402 (after the importorskip)

UPLOAD_MB = 1.0


@pytest.fixture(scope="module")
def url(served_backend) -> Iterator[str]:
    settings = ServerSettings(max_batch_delay_ms=20, max_files=4, max_upload_mb=UPLOAD_MB)
    with live_server(create_app(settings, backend=served_backend), settings) as address:
        yield address


def client_for(url: str):
    return tritonclient_http.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)


def image_input(*images: bytes):
    """Images as a binary tensor (tritonclient sends BYTES in JSON only as UTF-8 text)."""
    tensor = tritonclient_http.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object), binary_data=True)
    return tensor


def test_versioned_routes_and_model_config(url):
    client = client_for(url)
    assert client.is_model_ready(MODEL, model_version="1")
    assert not client.is_model_ready(MODEL, model_version="2")
    assert client.get_model_metadata(MODEL, model_version="1")["versions"] == ["1"]
    with pytest.raises(InferenceServerException, match="no version '2'"):
        client.get_model_metadata(MODEL, model_version="2")
    config = client.get_model_config(MODEL)
    assert config == client.get_model_config(MODEL, model_version="1")
    assert config["name"] == MODEL and config["max_batch_size"] == 0
    assert [o["name"] for o in config["output"]] == OUTPUT_NAMES
    assert config["input"] == [{"name": "image", "data_type": "TYPE_STRING", "dims": [-1]}]


def test_repository_index_and_statistics(url):
    client = client_for(url)
    assert client.get_model_repository_index() == [
        {"name": MODEL, "version": "1", "state": "READY", "reason": ""}
    ]
    for call in (lambda: client.get_inference_statistics(), lambda: client.get_inference_statistics(MODEL)):
        with pytest.raises(InferenceServerException, match="statistics extension is not served") as raised:
            call()
        assert raised.value.status() == "404" and "/metrics" in raised.value.message()


@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_infer_with_compressed_bodies_matches_v1(url, compression):
    images = [photo_bytes(120, 160, seed=11), photo_bytes(80, 100, seed=12)]
    result = client_for(url).infer(
        MODEL, [image_input(*images)], model_version="1", request_compression_algorithm=compression
    )
    assert_same_as_v1(result, v1_detections(url, images))
    assert result.get_response()["model_version"] == "1"


def test_binary_and_json_outputs(url):
    images = [photo_bytes(seed=13)]
    expected = v1_detections(url, images)
    client = client_for(url)
    outputs = [tritonclient_http.InferRequestedOutput(name, binary_data=True) for name in OUTPUT_NAMES]
    binary = client.infer(MODEL, [image_input(*images)], outputs=outputs)
    assert all("data" not in o for o in binary.get_response()["outputs"])
    assert binary.as_numpy("labels").dtype == object and isinstance(binary.as_numpy("labels")[0, 0], bytes)
    assert_same_as_v1(binary, expected)  # labels decode as Triton clients expect
    as_json = [tritonclient_http.InferRequestedOutput(name, binary_data=False) for name in OUTPUT_NAMES]
    plain = client.infer(MODEL, [image_input(*images)], outputs=as_json)
    assert all("data" in o for o in plain.get_response()["outputs"])
    assert plain.as_numpy("scores").tolist() == binary.as_numpy("scores").tolist()
    # Mixed: one binary, one JSON, and the request-wide default for outputs not named.
    mixed = client.infer(
        MODEL,
        [image_input(*images)],
        outputs=[
            tritonclient_http.InferRequestedOutput("scores", binary_data=True),
            tritonclient_http.InferRequestedOutput("labels", binary_data=False),
        ],
    )
    kinds = {o["name"]: "data" in o for o in mixed.get_response()["outputs"]}
    assert kinds == {"scores": False, "labels": True}
    assert mixed.as_numpy("scores").tolist() == binary.as_numpy("scores").tolist()


def test_binary_bytes_outputs_are_length_prefixed(url):
    """The raw layout itself: uint32 little-endian length, then the UTF-8 label."""
    body = {
        "inputs": [
            {"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 0}}
        ],
        "outputs": [{"name": "labels", "parameters": {"binary_data": True}}],
        "parameters": {"max_detections": 2},
    }
    image = photo_bytes(seed=14)
    header = json.dumps(body).encode()
    element = len(image).to_bytes(4, "little") + image
    body["inputs"][0]["parameters"]["binary_data_size"] = len(element)
    header = json.dumps(body).encode()
    response = httpx.post(
        f"{url}/v2/models/{MODEL}/versions/1/infer",
        content=header + element,
        headers={"Inference-Header-Content-Length": str(len(header))},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    meta = json.loads(response.content[:length])
    labels = [d["label"] for d in v1_detections(url, [image], max_detections=2)[0]]
    assert meta["outputs"] == [
        {
            "name": "labels",
            "shape": [1, 2],
            "datatype": "BYTES",
            "parameters": {"binary_data_size": meta["outputs"][0]["parameters"]["binary_data_size"]},
        }
    ]
    expected = b"".join(len(label).to_bytes(4, "little") + label.encode() for label in labels)
    assert response.content[length:] == expected


def gzip_bomb(inflated_bytes: int) -> bytes:
    """gzip of ``inflated_bytes`` zeros, built a megabyte at a time."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1 << 20)
    parts = [compressor.compress(chunk) for _ in range(inflated_bytes >> 20)]
    return b"".join([*parts, compressor.flush()])


def test_gzip_bomb_is_refused_with_bounded_memory(url):
    """256 MiB of zeros in ~250 KB of gzip, against a 1 MiB upload limit: 413, and the server
    process never holds more than about the limit for it (traced Python allocations)."""
    bomb = gzip_bomb(256 << 20)
    assert len(bomb) < UPLOAD_MB * 2**20
    tracemalloc.start()
    try:
        response = httpx.post(
            f"{url}/v2/models/{MODEL}/infer",
            content=bomb,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            timeout=60,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 413, response.text
    assert "inflates to more than 1.0 MiB" in response.json()["error"]
    assert peak < 8 * UPLOAD_MB * 2**20, f"peak {peak / 2**20:.1f} MiB while refusing the bomb"


@pytest.mark.parametrize(
    ("encoding", "body", "status", "message"),
    [
        ("gzip", b"not gzip at all", 400, "not valid gzip"),
        ("gzip", gzip.compress(b'{"inputs": []}')[:-12], 400, "ends before"),
        ("gzip", gzip.compress(b"{}") + b"trailing", 400, "data after"),
        ("br", b"...", 415, "not supported"),
    ],
)
def test_bad_compressed_bodies(url, encoding, body, status, message):
    response = httpx.post(
        f"{url}/v2/models/{MODEL}/infer", content=body, headers={"Content-Encoding": encoding}
    )
    assert response.status_code == status and message in response.json()["error"], response.text


def test_inflate_stops_at_the_limit():
    assert inflate(zlib.compress(b"x" * 100), "deflate", 100) == b"x" * 100
    with pytest.raises(ApiError) as raised:
        inflate(zlib.compress(b"x" * 101), "deflate", 100)
    assert raised.value.status == 413


def test_openapi_documents_the_infer_body(url):
    document = httpx.get(f"{url}/openapi.json").json()
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        body = document["paths"][path]["post"]["requestBody"]
        assert body["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/V2InferRequest"
        }
    assert "inputs" in document["components"]["schemas"]["V2InferRequest"]["properties"]
    # {version} is a path parameter of the versioned routes only.
    for path, operations in document["paths"].items():
        if path.startswith("/v2/models/{name}"):
            names = {(p["name"], p["in"]) for op in operations.values() for p in op.get("parameters", [])}
            assert names == (
                {("name", "path"), ("version", "path")} if "{version}" in path else {("name", "path")}
            )
    assert "/v2/models/{name}/config" in document["paths"]


def test_async_infer(url):
    """tritonclient's async_infer (requests in flight together): answers matched to requests."""
    images = [photo_bytes(seed=20 + i) for i in range(4)]
    expected = [v1_detections(url, [image])[0] for image in images]
    client = tritonclient_http.InferenceServerClient(url.removeprefix("http://"), concurrency=4)
    pending = [client.async_infer(MODEL, [image_input(image)]) for image in images]
    for request, detections in zip(pending, expected, strict=True):
        assert_same_as_v1(request.get_result(), [detections])
