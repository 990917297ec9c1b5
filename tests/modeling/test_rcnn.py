"""The official Faster R-CNN + DyHead model built from the official YAML: exact state-dict keys and
shapes, a checkpoint in the official format loads and runs, fixed-shape outputs, ``predict``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dyhead_serve.checkpoint import load_state_dict
from dyhead_serve.cli import main
from dyhead_serve.config import load_config
from dyhead_serve.modeling.build import build_model
from dyhead_serve.modeling.rcnn import GeneralizedRCNN
from tests.conftest import official_format_checkpoint, reference_keys

NAME = "dyhead_r50_rcnn_fpn_1x"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return official_format_checkpoint(NAME, tmp_path_factory.mktemp("ckpt") / "rcnn.pth")


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> GeneralizedRCNN:
    built = build_model(load_config(NAME, overrides=["MODEL.DEVICE", "cpu"]))
    assert isinstance(built, GeneralizedRCNN)
    report = load_state_dict(built, str(checkpoint))
    assert report.ok
    return built


def test_state_dict_equals_official_key_list(model):
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(k, shape) for k, shape, _ in reference_keys(NAME)]


def test_no_mask_head_is_built():
    cfg = load_config(NAME, overrides=["MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.MASK_ON is False  # the official config names a mask head but does not enable it
    assert not any("mask" in k for k, _, _ in reference_keys(NAME))
    with pytest.raises(ValueError, match="MASK_ON"):
        build_model(load_config(NAME, overrides=["MODEL.DEVICE", "cpu", "MODEL.MASK_ON", "True"]))


def test_interface(model):
    assert model.size_divisibility == 64  # the DyHead tower's coarsest level, P6
    assert model.num_classes == 80
    shapes = model.backbone.output_shape()
    assert [(k, s.stride) for k, s in shapes.items()] == [
        ("p2", 4),
        ("p3", 8),
        ("p4", 16),
        ("p5", 32),
        ("p6", 64),
    ]


def test_forward_outputs_fixed_shapes_and_decodes(model, checkpoint):
    stored = torch.load(checkpoint, weights_only=True)["model"]
    key = "roi_heads.box_predictor.bbox_pred.weight"
    torch.testing.assert_close(model.state_dict()[key], stored[key])
    torch.manual_seed(0)
    image_sizes = torch.tensor([[128, 180], [100, 128]])
    with torch.no_grad():
        out = model(torch.randn(2, 3, 128, 192), image_sizes)
    assert set(out) == {"proposals", "num_proposals", "logits", "deltas"}
    assert out["proposals"].shape == (2, 1000, 4)
    assert out["logits"].shape == (2, 1000, 81)
    assert out["deltas"].shape == (2, 1000, 320)
    assert out["num_proposals"].dtype == torch.int64 and out["num_proposals"].shape == (2,)
    for i, (h, w) in enumerate(image_sizes.tolist()):
        n = int(out["num_proposals"][i])
        assert 0 < n <= 1000
        boxes = out["proposals"][i, :n]
        assert (boxes >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    detections = model.decoder.decode_resized(out, (128, 192), [(128, 180), (100, 128)], score_threshold=0.0)
    for det, (h, w) in zip(detections, image_sizes.tolist(), strict=True):
        assert 0 < len(det.scores) <= 100
        assert det.scores.tolist() == sorted(det.scores.tolist(), reverse=True)
        assert (det.boxes[:, 2] <= w).all() and (det.boxes[:, 3] <= h).all()
        assert (det.classes >= 0).all() and (det.classes < 80).all()


def test_image_sizes_are_required(model):
    with pytest.raises(ValueError, match="image_sizes"):
        model(torch.zeros(1, 3, 64, 64), torch.tensor([64, 64]))


def test_predict_cli(capsys, checkpoint, photo_path):
    code = main(
        [
            "-q", "predict", "--config", NAME, "--weights", str(checkpoint), "--device", "cpu",
            "--backend", "torch",
            # random weights score below the config's 0.05: lower the model's own threshold
            # (--score-threshold only drops detections)
            "--set", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "--set", "INPUT.MIN_SIZE_TEST", "128",
            "--set", "INPUT.MAX_SIZE_TEST", "256", str(photo_path),
        ]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    (result,) = json.loads(out)
    assert (result["width"], result["height"]) == (160, 120)
    assert result["detections"], "a candidate threshold of 0 must give detections"
    for det in result["detections"]:
        x1, y1, x2, y2 = det["box"]
        assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 120
