"""The whole road for mmdetection models, checked against mmdetection's own detections:
``predict`` with a shipped config name, a user config with ``_base_`` files, a resolved dump and a
zoo name; the REST server; ``eval`` on a COCO json; ``dyhead-export onnx`` (slow)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from fastapi.testclient import TestClient

from dyhead_serve.cli import main
from dyhead_serve.cli.export import main as export_main
from dyhead_serve.config.mmdet import mmdet_config_path
from dyhead_serve.data.coco_classes import COCO_CLASS_NAMES
from dyhead_serve.server import ServerSettings, create_app
from tests.config.test_mmdet_translate import DUMP
from tests.mmdet.conftest import (
    CAFFE,
    SIMPLE,
    SMALL,
    assert_matches,
    detections_from_json,
    reference,
    torch_backend,
    write_photo,
)
from tests.server.conftest import wait_ready

SMALL_FLAGS = [flag for i in range(0, len(SMALL), 2) for flag in ("--set", SMALL[i], SMALL[i + 1])]


def _predict(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict]:
    """PyTorch's detections (what mmdetection's are compared with, bit for bit)."""
    assert main(["-q", "predict", "--backend", "torch", *args]) == 0
    return json.loads(capsys.readouterr().out)


def _check(result: dict, config: str, photo: str = "astronaut", variant: str = "small") -> None:
    assert_matches(detections_from_json(result["detections"], result["height"], result["width"]),
                   reference(config, photo, variant))  # fmt: skip


def test_predict_with_a_shipped_config_name_and_a_zoo_name(tmp_path, capsys, checkpoints):
    image = write_photo("astronaut", tmp_path)
    weights = str(checkpoints(SIMPLE))
    (result,) = _predict(capsys, "--config", SIMPLE, "--weights", weights, *SMALL_FLAGS, str(image))
    _check(result, SIMPLE)
    assert result["detections"][0]["label"] in COCO_CLASS_NAMES
    (result,) = _predict(capsys, "--model", SIMPLE, "--weights", weights, *SMALL_FLAGS, str(image))
    _check(result, SIMPLE)


def test_a_missing_opencv_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch, checkpoints):
    image = write_photo("astronaut", tmp_path)
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 now fails
    args = ["--backend", "torch", "--config", SIMPLE, "--weights", str(checkpoints(SIMPLE)), str(image)]
    assert main(["-q", "predict", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "pip install 'dyhead-serve[mmdet]'" in err and "\n" not in err


def test_predict_with_a_user_config_and_its_base_files(tmp_path, capsys, checkpoints):
    image = write_photo("astronaut", tmp_path)
    configs = tmp_path / "configs"
    (configs / "_base_").mkdir(parents=True)
    shutil.copy(mmdet_config_path(CAFFE), configs / "_base_" / "dyhead.py")
    mine = configs / "mine.py"
    mine.write_text(
        "_base_ = ['_base_/dyhead.py']\n"
        "test_pipeline = [dict(type='LoadImageFromFile'),\n"
        "                 dict(type='Resize', scale=(640, 384), keep_ratio=True, backend='pillow')]\n"
    )
    (result,) = _predict(capsys, "--config", str(mine), "--weights", str(checkpoints(CAFFE)), str(image))
    _check(result, CAFFE)


def test_predict_with_a_resolved_dump(tmp_path, capsys, checkpoints):
    image = write_photo("astronaut", tmp_path)
    dump = tmp_path / "dumped.py"
    dump.write_text(DUMP.replace("scale=(1333, 800, )", "scale=(640, 384, )"))
    (result,) = _predict(capsys, "--config", str(dump), "--weights", str(checkpoints(SIMPLE)), str(image))
    _check(result, SIMPLE)


def test_the_server_answers_mmdetections_detections(tmp_path, checkpoints):
    backend = torch_backend(CAFFE, SMALL, checkpoints(CAFFE))
    settings = ServerSettings(model=CAFFE, device="cpu", max_batch_delay_ms=5)
    data = write_photo("astronaut", tmp_path).read_bytes()
    with TestClient(create_app(settings, backend=backend)) as client:
        wait_ready(client)
        response = client.post("/v1/detect", files={"file": ("astronaut.png", data, "image/png")})
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    _check(result, CAFFE)


def test_eval_on_a_coco_json(tmp_path, capsys, checkpoints):
    write_photo("astronaut", tmp_path)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(COCO_CLASS_NAMES)]
    annotations = [
        {"id": 1, "image_id": 7, "category_id": 1, "bbox": [140.0, 20.0, 250.0, 490.0], "iscrowd": 0}
    ]
    images = [{"id": 7, "file_name": "astronaut.png", "height": 512, "width": 512}]
    json_file = tmp_path / "val.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    out = tmp_path / "eval"
    args = ["eval", "--config", CAFFE, "--weights", str(checkpoints(CAFFE)), "--device", "cpu",
            "--backend", "torch", "--no-progress", "--register-coco", "astro", str(json_file), str(tmp_path),
            *SMALL, "DATASETS.TEST", "('astro',)", "OUTPUT_DIR", str(out)]  # fmt: skip
    assert main(["-q", *args]) == 0
    assert "AP" in capsys.readouterr().out
    results = json.loads((out / "coco_instances_results.json").read_text())
    expected = reference(CAFFE, "astronaut", "small")["detections"]
    assert [r["category_id"] - 1 for r in results] == expected["labels"]
    for result, box in zip(results, expected["bboxes"], strict=True):
        x, y, w, h = result["bbox"]
        assert max(abs(x - box[0]), abs(y - box[1]), abs(x + w - box[2]), abs(y + h - box[3])) <= 0.01


@pytest.mark.slow
def test_export_cli_verifies_and_the_export_predicts_mmdetections_detections(tmp_path, capsys, checkpoints):
    image = write_photo("astronaut", tmp_path)
    out = tmp_path / "exported"
    code = export_main(["onnx", "--config", SIMPLE, "--weights", str(checkpoints(SIMPLE)), *SMALL_FLAGS,
                        "--out", str(out), "--verify-image", str(image)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "ok: wrote" in printed
    (result,) = _predict(capsys, "--model", str(out), str(image))
    _check(result, SIMPLE)
