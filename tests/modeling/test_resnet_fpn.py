"""ResNet variants and the FPN in Detectron2's form."""

from __future__ import annotations

import pytest
import torch

from dyhead_serve.modeling.backbone.resnet import DeformBottleneckBlock, build_resnet
from dyhead_serve.modeling.fpn import FPN, LastLevelMaxPool, LastLevelP6P7
from dyhead_serve.modeling.layers import FrozenBatchNorm2d


def test_frozen_bn_matches_formula_with_and_without_grad():
    bn = FrozenBatchNorm2d(3)
    bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
    bn.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    bn.running_mean.copy_(torch.tensor([1.0, 0.0, 2.0]))
    bn.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
    x = torch.ones(1, 3, 1, 1) * 3
    expected = torch.tensor(
        [(3 - 1) / (4 + 1e-5) ** 0.5, 2 * 3 / (1 + 1e-5) ** 0.5 + 1, 0.5 * 1 / (0.25 + 1e-5) ** 0.5 - 1]
    )
    torch.testing.assert_close(bn(x).flatten(), expected)
    torch.testing.assert_close(bn(x.requires_grad_()).flatten(), expected)
    assert [n for n, _ in bn.named_parameters()] == []


def test_resnet50_strides_channels_and_stride_in_1x1():
    net = build_resnet(depth=50, out_features=["res2", "res3", "res4", "res5"], stride_in_1x1=True)
    assert {k: (s.channels, s.stride) for k, s in net.output_shape().items()} == {
        "res2": (256, 4), "res3": (512, 8), "res4": (1024, 16), "res5": (2048, 32)
    }  # fmt: skip
    assert net.res3[0].conv1.stride == (2, 2) and net.res3[0].conv2.stride == (1, 1)
    out = net(torch.randn(1, 3, 64, 64))
    assert out["res5"].shape == (1, 2048, 2, 2)
    caffe = build_resnet(depth=50, out_features=["res3"], stride_in_1x1=False)
    assert caffe.res3[0].conv1.stride == (1, 1) and caffe.res3[0].conv2.stride == (2, 2)
    assert not hasattr(caffe, "res4")  # stages after the last output are not built


def test_resnext_groups_and_deformable_stage():
    net = build_resnet(
        depth=50, out_features=["res5"], num_groups=32, width_per_group=4,
        deform_on_per_stage=[False, False, True, True], deform_modulated=True,
    )  # fmt: skip
    assert net.res2[0].conv2.groups == 32 and net.res2[0].conv2.weight.shape == (128, 4, 3, 3)
    assert isinstance(net.res4[0], DeformBottleneckBlock)
    assert net.res4[0].conv2_offset.weight.shape[0] == 27
    out = net(torch.randn(1, 3, 64, 64))
    assert out["res5"].shape == (1, 2048, 2, 2)


@pytest.mark.parametrize("modulated", [False, True])
def test_deformable_block_in_training_refuses_non_finite_offsets(modulated: bool) -> None:
    """torchvision's CPU deform_conv2d segfaults on NaN offsets; in training the block raises."""
    block = DeformBottleneckBlock(8, 16, bottleneck_channels=4, deform_modulated=modulated)
    x = torch.randn(1, 8, 6, 6)
    assert block.train()(x).shape == (1, 16, 6, 6)
    with torch.no_grad():
        block.conv2_offset.bias[3] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite offsets in deformable conv"):
        block(x)


def test_resnet18_and_freeze():
    net = build_resnet(depth=18, out_features=["res4"], res2_out_channels=64, freeze_at=2)
    assert not any(p.requires_grad for p in net.stem.parameters())
    assert not any(p.requires_grad for p in net.res2.parameters())
    assert all(p.requires_grad for p in net.res3.parameters())
    narrow = build_resnet(depth=18, out_features=["res5"], stem_out_channels=16, res2_out_channels=16)
    assert narrow.output_shape()["res5"].channels == 128
    assert narrow(torch.randn(1, 3, 64, 64))["res5"].shape == (1, 128, 2, 2)
    with pytest.raises(ValueError, match="deformable"):
        build_resnet(depth=18, out_features=["res4"], res2_out_channels=64, deform_on_per_stage=[True] * 4)


def test_fpn_levels_and_top_blocks():
    bottom_up = build_resnet(depth=18, out_features=["res3", "res4", "res5"], res2_out_channels=64)
    fpn = FPN(bottom_up, ["res3", "res4", "res5"], 32, top_block=LastLevelP6P7(32, 32, "p5"))
    out = fpn(torch.randn(2, 3, 128, 128))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "p3": (16, 16), "p4": (8, 8), "p5": (4, 4), "p6": (2, 2), "p7": (1, 1)
    }  # fmt: skip
    assert fpn.size_divisibility == 32
    assert "fpn_lateral3.weight" in fpn.state_dict() and "top_block.p7.bias" in fpn.state_dict()
    rcnn = FPN(
        build_resnet(depth=18, out_features=["res2", "res3", "res4", "res5"], res2_out_channels=64),
        ["res2", "res3", "res4", "res5"], 16, top_block=LastLevelMaxPool(),
    )  # fmt: skip
    assert list(rcnn(torch.randn(1, 3, 64, 64))) == ["p2", "p3", "p4", "p5", "p6"]
    with pytest.raises(ValueError, match="double"):
        FPN(bottom_up, ["res3", "res5"], 32)
