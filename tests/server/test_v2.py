"""The Open Inference Protocol v2 routes, in JSON and with the binary tensor extension."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from tests.server.conftest import photo_bytes

MODEL = "dyhead_r50_atss_fpn_1x"


def infer_body(*images: bytes, **parameters):
    body = {
        "id": "req-1",
        "inputs": [
            {
                "name": "image",
                "shape": [len(images)],
                "datatype": "BYTES",
                "data": [base64.b64encode(i).decode() for i in images],
            }
        ],
    }
    if parameters:
        body["parameters"] = parameters
    return body


def tensors(response) -> dict:
    return {o["name"]: o for o in response.json()["outputs"]}


def test_health_and_metadata(client):
    server = client.get("/v2").json()
    assert server["name"] == "dyhead-serve" and "binary_tensor_data" in server["extensions"]
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get(f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
    meta = client.get(f"/v2/models/{MODEL}").json()
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"] for o in meta["outputs"]} == {
        "num_detections", "boxes", "scores", "class_ids", "labels", "image_sizes",
    }  # fmt: skip
    missing = client.get("/v2/models/nope")
    assert missing.status_code == 404 and isinstance(missing.json()["error"], str)


def test_infer_matches_v1(client):
    images = [photo_bytes(120, 160, seed=1), photo_bytes(100, 100, seed=2)]
    response = client.post(f"/v2/models/{MODEL}/infer", json=infer_body(*images, max_detections=30))
    assert response.status_code == 200, response.text
    assert response.json()["id"] == "req-1" and response.json()["model_name"] == MODEL
    out = tensors(response)
    v1 = client.post(
        "/v1/detect",
        files=[("files", (f"{i}.png", d)) for i, d in enumerate(images)],
        params={"max_detections": 30},
    ).json()["results"]
    counts = [len(r["detections"]) for r in v1]
    k = max(counts)
    assert out["num_detections"]["data"] == counts and out["num_detections"]["datatype"] == "INT32"
    assert out["boxes"]["shape"] == [2, k, 4] and out["scores"]["shape"] == [2, k]
    assert out["image_sizes"]["data"] == [120, 160, 100, 100]
    for n, result in enumerate(v1):
        row = slice(n * k, n * k + counts[n])
        assert out["scores"]["data"][row] == [d["score"] for d in result["detections"]]
        assert out["class_ids"]["data"][row] == [d["class_id"] for d in result["detections"]]
        assert out["labels"]["data"][row] == [d["label"] for d in result["detections"]]
        boxes = out["boxes"]["data"][n * k * 4 : (n * k + counts[n]) * 4]
        assert boxes == [v for d in result["detections"] for v in d["box"]]
        padding = slice(n * k + counts[n], (n + 1) * k)
        assert set(out["class_ids"]["data"][padding]) <= {-1}


def test_binary_tensor_extension_and_output_selection(client):
    image = photo_bytes(seed=7)
    parameters = {"binary_data_size": 4 + len(image)}
    header = {
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": parameters}],
        "outputs": [{"name": "scores"}, {"name": "num_detections"}],
    }
    head = json.dumps(header).encode()
    response = client.post(
        f"/v2/models/{MODEL}/infer",
        content=head + struct.pack("<I", len(image)) + image,
        headers={
            "Inference-Header-Content-Length": str(len(head)),
            "content-type": "application/octet-stream",
        },
    )
    assert response.status_code == 200, response.text
    assert [o["name"] for o in response.json()["outputs"]] == ["scores", "num_detections"]
    as_json = tensors(client.post(f"/v2/models/{MODEL}/infer", json=infer_body(image)))
    assert tensors(response)["scores"]["data"] == as_json["scores"]["data"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"inputs": []}, 400),
        ({"inputs": [{"name": "input0", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, 400),
        ({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": ["aGVsbG8="]}]}, 400),
        ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGVsbG8="]}]}, 400),
        ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [12]}]}, 400),
        ({"inputs": [{"name": "image", "shape": [5], "datatype": "BYTES", "data": ["a"] * 5}]}, 413),
        ({**infer_body(b"x"), "outputs": [{"name": "masks"}]}, 400),
        (infer_body(photo_bytes(), score_threshold=3), 422),
        (infer_body(photo_bytes(), classes="unicorn"), 422),
        ("not json", 400),
    ],
    ids=["no-input", "wrong-input", "shape-mismatch", "not-an-image", "not-a-string", "too-many",
         "unknown-output", "bad-threshold", "unknown-class", "not-json"],
)  # fmt: skip
def test_infer_errors_use_the_protocol_error_shape(client, body, status):
    if isinstance(body, str):
        response = client.post(
            f"/v2/models/{MODEL}/infer", content=body, headers={"content-type": "application/json"}
        )
    else:
        response = client.post(f"/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == status, response.text
    assert isinstance(response.json()["error"], str) and response.json()["error"]
    good = client.post(f"/v2/models/{MODEL}/infer", json=infer_body(photo_bytes()))
    assert good.status_code == 200
