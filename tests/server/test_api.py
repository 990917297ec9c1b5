"""The /v1 API, health, metrics and the demo page through FastAPI's test client."""

from __future__ import annotations

import base64
import io

from PIL import Image

from tests.server.conftest import photo_bytes


def detect_one(client, data: bytes | None = None, **params):
    data = data if data is not None else photo_bytes()
    return client.post("/v1/detect", files={"file": ("photo.png", data, "image/png")}, params=params)


def test_detect_one_image(client):
    response = detect_one(client)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "dyhead_r50_atss_fpn_1x"
    (result,) = body["results"]
    assert (result["file"], result["width"], result["height"]) == ("photo.png", 160, 120)
    assert result["detections"], "the tiny model detects something in the photo"
    scores = [d["score"] for d in result["detections"]]
    assert scores == sorted(scores, reverse=True)
    for det in result["detections"]:
        x1, y1, x2, y2 = det["box"]
        assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 120
        assert det["label"] == f"class_{det['class_id']}"
    timing = body["timing"]
    assert timing["total_ms"] >= timing["inference_ms"] > 0 and timing["batch_size"] >= 1


def test_several_files_and_json_base64_give_the_same_detections(client):
    images = [photo_bytes(seed=1), photo_bytes(100, 100, seed=2)]
    multipart = client.post(
        "/v1/detect", files=[("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    )
    as_json = client.post(
        "/v1/detect",
        json={
            "images": [
                {"data": base64.b64encode(images[0]).decode(), "name": "0.png"},
                {"data": "data:image/png;base64," + base64.b64encode(images[1]).decode()},
            ]
        },
    )
    assert multipart.status_code == as_json.status_code == 200, (multipart.text, as_json.text)
    got_multipart, got_json = multipart.json()["results"], as_json.json()["results"]
    assert [r["file"] for r in got_multipart] == ["0.png", "1.png"]
    assert [r["file"] for r in got_json] == ["0.png", None]
    assert [r["detections"] for r in got_multipart] == [r["detections"] for r in got_json]
    assert [(r["width"], r["height"]) for r in got_json] == [(160, 120), (100, 100)]


def test_options_filter_and_limit(client):
    everything = detect_one(client).json()["results"][0]["detections"]
    class_id = everything[0]["class_id"]
    limited = detect_one(client, max_detections=2).json()["results"][0]["detections"]
    assert limited == everything[:2]
    by_name = detect_one(client, classes=f"class_{class_id}").json()["results"][0]["detections"]
    by_id = client.post(
        "/v1/detect",
        files={"file": ("p.png", photo_bytes(), "image/png")},
        data={"classes": [str(class_id)]},
    ).json()["results"][0]["detections"]
    assert by_name == by_id == [d for d in everything if d["class_id"] == class_id]
    # The threshold applies where predict's --score-threshold does (ATSS: to the class probability,
    # before the centerness product), so compare counts, not scores.
    stricter = detect_one(client, score_threshold=0.9).json()
    assert len(stricter["results"][0]["detections"]) < len(everything)
    in_json = client.post(
        "/v1/detect",
        json={"images": [{"data": base64.b64encode(photo_bytes()).decode()}], "max_detections": 1},
        params={"max_detections": 5},  # the body wins over the query string
    ).json()
    assert len(in_json["results"][0]["detections"]) == 1


def test_annotated_image(client):
    for image_format, magic in (("jpeg", b"\xff\xd8"), ("png", b"\x89PNG")):
        response = client.post(
            "/v1/detect/annotated",
            files={"file": ("photo.png", photo_bytes(), "image/png")},
            params={"format": image_format},
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == f"image/{image_format}"
        assert response.content.startswith(magic)
        assert int(response.headers["x-detections"]) > 0
        assert Image.open(io.BytesIO(response.content)).size == (160, 120)
    two = client.post("/v1/detect/annotated", files=[("files", ("a.png", photo_bytes(), "image/png"))] * 2)
    assert two.status_code == 413 and two.json()["error"]["code"] == "too_many_files"


def annotated_png(client, **params):
    files = {"file": ("photo.png", photo_bytes(), "image/png")}
    return client.post("/v1/detect/annotated", files=files, params={"format": "png", **params})


def test_annotated_image_draws_what_predict_out_dir_draws(client):
    """By default the route draws the detections scoring at least predict's --draw-threshold
    default (one constant), pixel for pixel as predict's drawing does; `draw_threshold` moves it."""
    import numpy as np
    import torch

    from dyhead_serve.cli.main import build_parser
    from dyhead_serve.pipeline.draw import draw_detections
    from dyhead_serve.pipeline.draw_threshold import DRAW_THRESHOLD
    from dyhead_serve.pipeline.postprocess import Detections

    assert build_parser().parse_args(["predict", "x.jpg"]).draw_threshold == DRAW_THRESHOLD == 0.3
    found = detect_one(client).json()["results"][0]["detections"]
    assert any(d["score"] < DRAW_THRESHOLD for d in found), "some detection is returned and not drawn"
    detections = Detections(
        boxes=torch.tensor([d["box"] for d in found], dtype=torch.float32).reshape(-1, 4),
        scores=torch.tensor([d["score"] for d in found], dtype=torch.float32),
        classes=torch.tensor([d["class_id"] for d in found], dtype=torch.int64),
        labels=[d["label"] for d in found],
        width=160,
        height=120,
    )
    photo = np.asarray(Image.open(io.BytesIO(photo_bytes())).convert("RGB"))
    cases = [({}, DRAW_THRESHOLD), ({"draw_threshold": 0.0}, 0.0), ({"draw_threshold": 1.0}, 1.0)]
    for params, threshold in cases:
        response = annotated_png(client, **params)
        assert response.status_code == 200, response.text
        assert int(response.headers["x-detections"]) == len(found)
        assert int(response.headers["x-detections-drawn"]) == sum(d["score"] >= threshold for d in found)
        drawn = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
        expected = np.asarray(draw_detections(photo, detections, threshold))
        assert np.array_equal(drawn, expected), params
    assert not np.array_equal(np.asarray(draw_detections(photo, detections, 0.0)), photo), "boxes drawn at 0"
    for bad in (-0.1, 1.5, "x"):
        assert annotated_png(client, draw_threshold=bad).status_code == 422


def test_demo_slider_starts_at_the_draw_threshold():
    from importlib import resources

    from dyhead_serve.pipeline.draw_threshold import DRAW_THRESHOLD

    page = resources.files("dyhead_serve.server").joinpath("static/demo.html").read_text()
    assert f'value="{DRAW_THRESHOLD:.2f}"' in page and f">{DRAW_THRESHOLD:.2f}<" in page


def test_models_health_readiness(client):
    (model,) = client.get("/v1/models").json()["models"]
    assert model["backend"] == "onnxruntime" and model["device"] == "cpu" and model["ready"] is True
    assert model["class_names"] == [f"class_{i}" for i in range(5)]
    assert model["input_spec"]["size_divisibility"] == 128
    assert client.get("/healthz").json()["status"] == "alive"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_metrics_count_requests_batches_and_queue(client):
    detect_one(client)
    client.post("/v1/detect", content=b"x", headers={"content-type": "text/plain"})
    text = client.get("/metrics").text
    assert 'dyhead_http_requests_total{method="POST",route="/v1/detect",status="200"}' in text
    assert 'dyhead_http_requests_total{method="POST",route="/v1/detect",status="415"}' in text
    for name in (
        "dyhead_http_request_duration_seconds_bucket",
        "dyhead_queue_depth",
        "dyhead_batch_size_bucket",
        "dyhead_inference_seconds_count",
        "dyhead_preprocess_seconds_count",
        "dyhead_images_in_flight",
    ):
        assert name in text
    assert "dyhead_ready 1.0" in text
    client.get("/no/such/path/12345")
    assert 'route="unmatched"' in client.get("/metrics").text  # raw paths never become labels


def test_demo_page_is_self_contained(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert 'id="file"' in page and "v1/detect" in page
    assert "http://" not in page and "https://" not in page  # no external scripts, styles or fonts
    assert "connect-src 'self'" in response.headers["content-security-policy"]


def test_openapi_documents_both_request_bodies_with_examples(client):
    document = client.get("/openapi.json").json()
    body = document["paths"]["/v1/detect"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    assert "DetectJsonRequest" in document["components"]["schemas"]
    assert document["components"]["schemas"]["DetectResponse"]["examples"]
    responses = document["paths"]["/v1/detect"]["post"]["responses"]
    assert {"200", "400", "413", "415", "422", "503", "504"} <= set(responses)
    assert client.get("/docs").status_code == 200
