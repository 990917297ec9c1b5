"""mmdetection checkpoints: our mmdet-layout detectors hold exactly mmdetection's tensors under
its names, load its files strictly and report mismatches in the file's names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dyhead_serve.checkpoint import CheckpointMismatchError, load_state_dict, read_state_dict
from dyhead_serve.checkpoint.mmdet_keys import mmdet_key_map
from dyhead_serve.config import load_config
from dyhead_serve.config.mmdet import MMDET_CONFIGS
from dyhead_serve.modeling.build import build_model

DATA = Path(__file__).resolve().parents[1] / "data" / "mmdet"

# A small mmdet-layout detector: ResNet-18 at the simple setting, 2 DyHead blocks of 32 channels.
TINY_MMDET = [
    "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.DYHEAD.CHANNELS", "32", "MODEL.DYHEAD.NUM_CONVS", "2",
    "MODEL.ATSS.NUM_CLASSES", "5",
]  # fmt: skip


def mmdet_keys(config: str) -> dict[str, tuple[int, ...]]:
    """name -> shape of mmdetection's model (tests/data/mmdet/<config>.keys.txt)."""
    keys = {}
    for line in (DATA / f"{config}.keys.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape, _ = line.split()
            keys[name] = () if shape == "-" else tuple(int(v) for v in shape.split("x"))
    return keys


@pytest.mark.parametrize("config", MMDET_CONFIGS)
def test_our_tensors_are_mmdetections_under_its_names(config: str) -> None:
    model = build_model(load_config(config, ["MODEL.DEVICE", "cpu"]))
    key_map = mmdet_key_map(model.state_dict().keys())
    ours = {key_map.to_file[name]: tuple(t.shape) for name, t in model.state_dict().items()}
    theirs = mmdet_keys(config)
    counters = {name for name in theirs if name.endswith("num_batches_tracked")}
    assert counters == set(key_map.optional)  # BatchNorm counters: accepted, never read
    assert set(ours) == set(theirs) - counters
    for name, shape in ours.items():
        # mmdetection's Scale is a 0-d tensor, ours a one-element vector
        assert shape == theirs[name] or (shape, theirs[name]) == ((1,), ()), name


def _tiny_mmdet_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint as mmdetection writes it for the tiny model, with random values."""
    model = build_model(load_config(MMDET_CONFIGS[1], TINY_MMDET))
    key_map = mmdet_key_map(model.state_dict().keys())
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, tensor in model.state_dict().items():
        value = torch.rand(tensor.shape, generator=generator) + 0.5
        state[key_map.to_file[name]] = value.reshape(()) if name.startswith("head.scales") else value
    for counter in key_map.optional:
        state[counter] = torch.tensor(7)
    torch.save(
        {"meta": {"mmdet_version": "3.3.0", "dataset_meta": {"classes": ("a",)}}, "state_dict": state}, path
    )
    return state


def test_an_mmdetection_checkpoint_loads_strictly(tmp_path: Path) -> None:
    path = tmp_path / "mmdet.pth"
    state = _tiny_mmdet_checkpoint(path)
    assert set(read_state_dict(path)) == set(state)  # the state_dict entry, not meta
    model = build_model(load_config(MMDET_CONFIGS[1], TINY_MMDET))
    key_map = mmdet_key_map(model.state_dict().keys())
    assert load_state_dict(model, path, key_map=key_map).ok
    loaded = model.state_dict()
    assert torch.equal(loaded["head.scales.2.scale"], state["bbox_head.scales.2.scale"].reshape(1))
    assert torch.equal(
        loaded["backbone.dyhead_tower.1.task_attn_module.conv2.conv.weight"],
        state["neck.1.dyhead_blocks.1.task_attn_module.conv2.conv.weight"],
    )
    assert torch.equal(
        loaded["backbone.backbone.top_block.p7.weight"], state["neck.0.fpn_convs.4.conv.weight"]
    )
    assert torch.equal(
        loaded["backbone.backbone.bottom_up.res3.0.shortcut.norm.running_var"],
        state["backbone.layer2.0.downsample.1.running_var"],
    )


def test_mismatches_are_reported_in_the_files_names(tmp_path: Path) -> None:
    path = tmp_path / "mmdet.pth"
    state = _tiny_mmdet_checkpoint(path)
    del state["bbox_head.atss_cls.bias"]
    state["bbox_head.atss_reg.weight"] = torch.zeros(4, 32, 1, 1)  # the simple setting has 3x3
    state["neck.2.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, path)
    model = build_model(load_config(MMDET_CONFIGS[1], TINY_MMDET))
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict(model, path, key_map=mmdet_key_map(model.state_dict().keys()))
    report = info.value.report
    assert report.missing_keys == ["bbox_head.atss_cls.bias"]
    assert report.unexpected_keys == ["neck.2.extra.weight"]
    assert [m.name for m in report.shape_mismatches] == ["bbox_head.atss_reg.weight"]
    assert "bbox_head.atss_reg.weight: (4, 32, 1, 1) in file vs (4, 32, 3, 3) in model" in str(info.value)


def test_a_checkpoint_of_the_other_family_gets_a_hint(tmp_path: Path) -> None:
    model = build_model(load_config(MMDET_CONFIGS[1], TINY_MMDET))
    path = tmp_path / "official.pth"
    torch.save({"model": model.state_dict()}, path)  # our (official-style) names
    with pytest.raises(CheckpointMismatchError, match="is it a checkpoint of another family"):
        load_state_dict(model, path, key_map=mmdet_key_map(model.state_dict().keys()))


def test_a_tensor_without_an_mmdetection_name_is_refused() -> None:
    model = build_model(load_config("dyhead_r50_rcnn_fpn_1x", ["MODEL.DEVICE", "cpu"]))
    with pytest.raises(ValueError, match="no counterpart in mmdetection's DyHead ATSS models"):
        mmdet_key_map(model.state_dict().keys())
