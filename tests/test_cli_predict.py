"""``dyhead-serve predict`` end to end on a checkpoint in the official format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dyhead_serve.cli import main

SMALL = ["--set", "INPUT.MIN_SIZE_TEST", "128", "--set", "INPUT.MAX_SIZE_TEST", "256"]


def _predict(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["-q", "predict", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_prints_json_and_draws(capsys, atss_checkpoint, photo_path, tmp_path):
    out_dir = tmp_path / "drawn"
    code, out, err = _predict(
        capsys, "--config", "dyhead_r50_atss_fpn_1x", "--weights", str(atss_checkpoint), "--device", "cpu",
        "--backend", "torch", "--score-threshold", "0.0", "--out-dir", str(out_dir), *SMALL, str(photo_path),
    )  # fmt: skip
    assert code == 0, err
    (result,) = json.loads(out)
    assert result["file"] == str(photo_path)
    assert (result["width"], result["height"]) == (160, 120)
    assert result["detections"], "threshold 0 must give detections"
    for det in result["detections"]:
        x1, y1, x2, y2 = det["box"]
        assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 120
        assert 0 <= det["score"] <= 1 and 0 <= det["class_id"] < 80 and isinstance(det["label"], str)
    scores = [d["score"] for d in result["detections"]]
    assert scores == sorted(scores, reverse=True)
    assert (out_dir / "photo.jpg").is_file()


def test_bad_images_are_reported_and_others_processed(capsys, atss_checkpoint, photo_path, tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8 definitely not a jpeg")
    sliver = tmp_path / "sliver.png"  # 1 x 4000: its short edge would be resized to 0 pixels
    Image.fromarray(np.zeros((1, 4000, 3), np.uint8)).save(sliver)
    code, out, err = _predict(
        capsys, "--config", "dyhead_r50_atss_fpn_1x", "--weights", str(atss_checkpoint), "--device", "cpu",
        "--backend", "torch", *SMALL, str(tmp_path / "missing.jpg"), str(junk), str(sliver), str(photo_path),
    )  # fmt: skip
    assert code == 1
    assert [r["file"] for r in json.loads(out)] == [str(photo_path)]
    lines = err.strip().splitlines()
    assert len(lines) == 3
    assert "missing.jpg" in lines[0] and "junk.jpg" in lines[1]
    assert "sliver.png" in lines[2] and "too elongated" in lines[2]


@pytest.mark.parametrize(
    ("config_text", "needle"),
    [
        ("MODEL:\n  RESNETS:\n    DEPTHH: 50\n", "MODEL.RESNETS.DEPTHH"),
        ("MODEL:\n  META_ARCHITECTURE: Nope\n", "META_ARCHITECTURE"),
        ("MODEL: [unclosed\n", "yaml"),
    ],
)
def test_bad_config_is_one_line_error(capsys, tmp_path, photo_path, atss_checkpoint, config_text, needle):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(config_text)
    code, out, err = _predict(
        capsys, "--config", str(cfg), "--weights", str(atss_checkpoint), "--device", "cpu", str(photo_path)
    )
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error:")
    assert needle.lower() in err.lower()


def test_mismatched_checkpoint_fails_with_report(capsys, tmp_path, photo_path, atss_checkpoint):
    code, out, err = _predict(
        capsys, "--config", "dyhead_r50_retina_fpn_1x", "--weights", str(atss_checkpoint), "--device", "cpu",
        "--backend", "torch", str(photo_path),
    )  # fmt: skip
    assert code == 2 and out == ""
    assert "head.centerness" in err and "head.cls_subnet" in err


def test_missing_checkpoint_file(capsys, photo_path, tmp_path):
    code, _, err = _predict(
        capsys, "--config", "dyhead_r50_atss_fpn_1x", "--weights", str(tmp_path / "nope.pth"), str(photo_path)
    )
    assert code == 2 and "nope.pth" in err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "predict" in capsys.readouterr().out


def test_console_script_is_declared():
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert 'dyhead-serve = "dyhead_serve.cli:main"' in text


def test_a_draw_threshold_outside_0_1_is_a_usage_error(capsys, photo_path, tmp_path):
    code, out, err = _predict(capsys, "--out-dir", str(tmp_path), "--draw-threshold", "1.5", str(photo_path))
    assert code != 0 and not out
    assert "--draw-threshold must be in [0, 1], got 1.5" in err


def test_score_threshold_is_the_minimum_score_returned(capsys, tmp_path):
    """``--score-threshold T`` returns exactly the detections of a plain predict scoring at least
    T (it used to move ATSS's candidate threshold, which applies before centerness, so detections
    below T came back)."""
    from dyhead_serve.data.synthetic import render_image

    image = tmp_path / "shapes.png"
    Image.fromarray(render_image(np.random.default_rng(11), 320, 320)[0]).save(image)
    assert main(["-q", "predict", str(image)]) == 0
    plain = json.loads(capsys.readouterr().out)[0]["detections"]
    assert main(["-q", "predict", "--score-threshold", "0.3", str(image)]) == 0
    kept = json.loads(capsys.readouterr().out)[0]["detections"]
    assert kept == [d for d in plain if d["score"] >= 0.3]
    assert any(d["score"] < 0.3 for d in plain) and kept
