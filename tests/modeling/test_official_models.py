"""The official ATSS and RetinaNet DyHead models built from the official YAML files: exact
state-dict keys and shapes, and loading a checkpoint in the official format."""

from __future__ import annotations

import pytest
import torch

from dyhead_serve.checkpoint import CheckpointMismatchError, load_state_dict
from dyhead_serve.config import load_config
from dyhead_serve.modeling.build import build_model
from tests.conftest import official_format_checkpoint, reference_keys

DENSE = ["dyhead_r50_atss_fpn_1x", "dyhead_r50_retina_fpn_1x"]


@pytest.mark.parametrize("name", DENSE)
def test_state_dict_equals_official_key_list(name):
    model = build_model(load_config(name, overrides=["MODEL.DEVICE", "cpu"]))
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(k, shape) for k, shape, _ in reference_keys(name)]


@pytest.mark.parametrize("name", DENSE)
def test_official_checkpoint_loads_and_runs(name, tmp_path):
    path = official_format_checkpoint(name, tmp_path / "w.pth")
    model = build_model(load_config(name, overrides=["MODEL.DEVICE", "cpu"]))
    report = load_state_dict(model, path)
    assert report.ok
    stored = torch.load(path, weights_only=True)["model"]
    torch.testing.assert_close(model.state_dict()["head.bbox_pred.weight"], stored["head.bbox_pred.weight"])
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 256))
    num_anchors = {"dyhead_r50_atss_fpn_1x": 1, "dyhead_r50_retina_fpn_1x": 9}[name]
    positions = sum((128 // s) * (256 // s) for s in (8, 16, 32, 64, 128))
    assert out["logits"].shape == (1, positions * num_anchors, 80)
    assert out["deltas"].shape == (1, positions * num_anchors, 4)
    assert ("centerness" in out) == (name == "dyhead_r50_atss_fpn_1x")


def test_mismatched_checkpoint_is_reported(tmp_path):
    path = official_format_checkpoint("dyhead_r50_retina_fpn_1x", tmp_path / "retina.pth")
    model = build_model(load_config("dyhead_r50_atss_fpn_1x", overrides=["MODEL.DEVICE", "cpu"]))
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict(model, path)
    text = str(info.value)
    assert "head.centerness" in text  # missing from the RetinaNet file
    assert "head.cls_subnet" in text  # unexpected in an ATSS model


def test_size_divisibility_and_levels():
    model = build_model(load_config("dyhead_r50_atss_fpn_1x", overrides=["MODEL.DEVICE", "cpu"]))
    assert model.size_divisibility == 128
    shapes = model.backbone.output_shape()
    assert [(k, s.stride, s.channels) for k, s in shapes.items()] == [
        ("p3", 8, 256), ("p4", 16, 256), ("p5", 32, 256), ("p6", 64, 256), ("p7", 128, 256)
    ]  # fmt: skip
