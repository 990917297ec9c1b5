"""DyHead as a neck of its own: both parameter layouts, their arithmetic, its checks, and the
example of docs/dyhead-module.md on torchvision's ResNet-50 + FPN."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from dyhead_serve.modeling import DyHead
from dyhead_serve.modeling.backbone.swin import PatchMerging

MODULE_DOC = Path(__file__).resolve().parents[2] / "docs" / "dyhead-module.md"
MMDET_KEYS = Path(__file__).resolve().parents[1] / "data" / "mmdet" / "atss_r50_fpn_dyhead_1x_coco.keys.txt"
OFFICIAL_KEYS = (
    Path(__file__).resolve().parents[1] / "data" / "reference_keys" / "dyhead_r50_atss_fpn_1x.keys.txt"
)


def _pyramid(channels: int = 16, levels: int = 4, seed: int = 0) -> list[torch.Tensor]:
    """Levels of 40x43, 20x22, 10x11, 5x6: each the previous one halved, rounded up."""
    gen = torch.Generator().manual_seed(seed)
    height, width, pyramid = 40, 43, []
    for _ in range(levels):
        pyramid.append(torch.randn(1, channels, height, width, generator=gen))
        height, width = -(-height // 2), -(-width // 2)
    return pyramid


def _keys(path: Path, prefix: str) -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in path.read_text().splitlines():
        if line.startswith(prefix):
            name, shape = line.split()[:2]
            keys[name[len(prefix) :]] = () if shape == "-" else tuple(int(v) for v in shape.split("x"))
    return keys


@pytest.mark.parametrize(
    ("layout", "path", "prefix"),
    [("mmdet", MMDET_KEYS, "neck.1."), ("official", OFFICIAL_KEYS, "backbone.")],
)
def test_state_dict_is_the_families_neck(layout: str, path: Path, prefix: str) -> None:
    neck = DyHead(256, num_blocks=6, layout=layout)
    expected = {
        k: v for k, v in _keys(path, prefix).items() if k.startswith(("dyhead_tower", "dyhead_blocks"))
    }
    assert {k: tuple(v.shape) for k, v in neck.state_dict().items()} == expected


def _official_weights_from_mmdet(mmdet: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same numbers in the official layout (DyConv 0/1/2 = high/mid/low; zero conv biases)."""
    rename = {"spatial_conv_high": "DyConv.0", "spatial_conv_mid": "DyConv.1", "spatial_conv_low": "DyConv.2"}
    official: dict[str, torch.Tensor] = {}
    for key, value in mmdet.items():
        key = key.replace("dyhead_blocks", "dyhead_tower")
        for old, new in rename.items():
            key = key.replace(old, new)
        key = key.replace(".norm.", ".bn.").replace("spatial_conv_offset", "offset")
        key = key.replace("scale_attn_module", "AttnConv").replace("task_attn_module.conv1.conv", "relu.fc.0")
        key = key.replace("task_attn_module.conv2.conv", "relu.fc.2")
        official[key] = value.flatten(1) if ".relu.fc." in key and key.endswith("weight") else value
        if key.endswith(".conv.weight") and "DyConv" in key:
            official[key[: -len("weight")] + "bias"] = torch.zeros(value.shape[0])
    return official


def test_both_layouts_compute_the_same_function() -> None:
    torch.manual_seed(0)
    mmdet = DyHead(16, num_blocks=2, layout="mmdet")
    with torch.no_grad():
        for p in mmdet.parameters():
            p.normal_(0, 0.3)
    official = DyHead(16, num_blocks=2, layout="official")
    official.load_state_dict(_official_weights_from_mmdet(mmdet.state_dict()))
    levels = _pyramid()
    with torch.no_grad():
        for a, b in zip(mmdet(levels), official(levels), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_levels_are_checked() -> None:
    neck = DyHead(16, num_blocks=1)
    with pytest.raises(ValueError, match="at least one feature level"):
        neck([])
    with pytest.raises(ValueError, match=r"every level must be \[N, 16, H, W\]"):
        neck([torch.zeros(1, 8, 8, 8)])
    with pytest.raises(
        ValueError, match=r"each level must be the previous one halved \(rounded up\), here \(4, 5\)"
    ):
        neck([torch.zeros(1, 16, 8, 9), torch.zeros(1, 16, 4, 4)])
    with pytest.raises(ValueError, match="unknown parameter layout"):
        DyHead(16, layout="mmdetection")
    with pytest.raises(ValueError, match="at least one block"):
        DyHead(16, num_blocks=0)
    out = DyHead(16, 32, num_blocks=2)([torch.zeros(1, 16, 9, 9), torch.zeros(1, 16, 5, 5)])
    assert [tuple(x.shape) for x in out] == [(1, 32, 9, 9), (1, 32, 5, 5)]


def test_patch_merging_in_unfold_order_is_mmdetections() -> None:
    """mmdetection merges Swin patches with nn.Unfold(2, stride 2): channel c's 2x2 patch, row-major."""
    torch.manual_seed(0)
    merge = PatchMerging(3, order="unfold")
    x = torch.randn(2, 5 * 7, 3)  # odd sizes: zero-padded to 6 x 8
    grid = torch.nn.functional.pad(x.view(2, 5, 7, 3).permute(0, 3, 1, 2), (0, 1, 0, 1))
    unfolded = torch.nn.Unfold(kernel_size=2, stride=2)(grid).transpose(1, 2)  # [2, 12, 12]
    with torch.no_grad():
        expected = merge.reduction(merge.norm(unfolded))
    assert torch.equal(merge(x, 5, 7), expected)


def test_the_documented_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    section = MODULE_DOC.read_text().split("# DyHead as a module", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    # the mmdetection checkpoint the example reads: its DyHead neck plus the rest of a detector
    weights = {
        f"neck.1.{k}": v.normal_(0, 0.05)
        for k, v in DyHead(256, num_blocks=6, layout="mmdet").state_dict().items()
    }
    weights["bbox_head.atss_cls.bias"] = torch.zeros(80)
    name = re.search(r'read_state_dict\("([^"]+)"\)', code.group(1))
    assert name is not None
    torch.save({"meta": {}, "state_dict": weights}, tmp_path / name.group(1))
    monkeypatch.chdir(tmp_path)
    printed: list[object] = []
    namespace = {"print": printed.append, "__name__": "dyhead_module_doc"}
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    exec(compile(code.group(1), "docs/dyhead-module.md", "exec"), namespace)  # the repository's own docs
    assert printed == [[(1, 256, 24, 32), (1, 256, 12, 16), (1, 256, 6, 8), (1, 256, 3, 4), (1, 256, 2, 2)]]
    assert torch.equal(namespace["dyhead"].state_dict()["dyhead_blocks.3.spatial_conv_mid.norm.weight"],
                       weights["neck.1.dyhead_blocks.3.spatial_conv_mid.norm.weight"])  # fmt: skip
