"""The server answers exactly what ``dyhead-serve predict`` prints for the same model and files,
whether an image runs alone or batched with others of its padded size."""

from __future__ import annotations

import json

import pytest

from dyhead_serve.cli import main as cli_main
from tests.server.conftest import photo_bytes


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exact")
    specs = [  # two of one size (they share a batch), one portrait, one JPEG
        ("a.png", photo_bytes(120, 160, seed=1)),
        ("b.png", photo_bytes(120, 160, seed=3)),
        ("c.png", photo_bytes(160, 120, seed=4)),
        ("d.jpg", photo_bytes(90, 200, seed=5, image_format="JPEG")),
    ]
    paths = []
    for name, data in specs:
        path = folder / name
        path.write_bytes(data)
        paths.append(path)
    return paths


def predict(capsys, model_dir, paths, *extra):
    code = cli_main(["predict", "--model", str(model_dir), "--device", "cpu", *extra, *map(str, paths)])
    assert code == 0
    return {entry["file"]: entry for entry in json.loads(capsys.readouterr().out)}


@pytest.mark.parametrize("threshold", [None, pytest.param(0.3, marks=pytest.mark.slow)])
def test_same_detections_as_predict(client, tiny_model_dir, image_files, capsys, threshold):
    extra = [] if threshold is None else ["--score-threshold", str(threshold)]
    params = {} if threshold is None else {"score_threshold": threshold}
    expected = predict(capsys, tiny_model_dir, image_files, *extra)
    assert sum(len(e["detections"]) for e in expected.values()) > 0

    for path in image_files:  # one image per request
        response = client.post("/v1/detect", files={"file": (path.name, path.read_bytes())}, params=params)
        (result,) = response.json()["results"]
        want = expected[str(path)]
        assert (result["width"], result["height"]) == (want["width"], want["height"])
        assert result["detections"] == want["detections"], path.name

    together = client.post(  # all in one request: a.png and b.png share one backend call
        "/v1/detect", files=[("files", (p.name, p.read_bytes())) for p in image_files], params=params
    ).json()
    assert together["timing"]["batch_size"] >= 2
    for path, result in zip(image_files, together["results"], strict=True):
        assert result["detections"] == expected[str(path)]["detections"], path.name
