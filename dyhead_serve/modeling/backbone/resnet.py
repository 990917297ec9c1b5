"""ResNet / ResNeXt in Detectron2's form (``stem`` + ``res2``..``res5``), with optional
deformable 3x3 convolutions per stage."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

from dyhead_serve.modeling.backbone.base import Backbone
from dyhead_serve.modeling.layers import Conv2d, get_norm
from dyhead_serve.modeling.shape_spec import ShapeSpec
from dyhead_serve.ops import check_finite_offsets

__all__ = ["BasicBlock", "BasicStem", "BottleneckBlock", "DeformBottleneckBlock", "ResNet", "build_resnet"]

BLOCKS_PER_STAGE = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
STAGE_NAMES = ("res2", "res3", "res4", "res5")


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


class BasicStem(nn.Module):
    """7x7 stride-2 convolution, ReLU, 3x3 stride-2 max pool: stride 4 in total."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm: str = "FrozenBN") -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = 4
        self.conv1 = Conv2d(
            in_channels, out_channels, kernel_size=7, stride=2, padding=3, bias=False,
            norm=get_norm(norm, out_channels),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


def _shortcut(in_channels: int, out_channels: int, stride: int, norm: str) -> Conv2d | None:
    if in_channels == out_channels:
        return None
    return Conv2d(
        in_channels, out_channels, kernel_size=1, stride=stride, bias=False, norm=get_norm(norm, out_channels)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    def __init__(
        self, in_channels: int, out_channels: int, *, stride: int = 1, norm: str = "FrozenBN"
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            3,
            stride=stride,
            padding=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        self.conv2 = Conv2d(
            out_channels, out_channels, 3, stride=1, padding=1, bias=False, norm=get_norm(norm, out_channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.conv1(x))
        out = self.conv2(out)
        out = out + (self.shortcut(x) if self.shortcut is not None else x)
        return F.relu_(out)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (grouped, dilated) -> 1x1 with a residual connection.

    ``stride_in_1x1`` puts the stride on the first 1x1 convolution (MSRA weights) instead of the 3x3.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: str = "FrozenBN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(
            in_channels, bottleneck_channels, 1, stride=stride_1x1, bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )  # fmt: skip
        self.conv2 = self._make_conv2(bottleneck_channels, stride_3x3, num_groups, norm, dilation)
        self.conv3 = Conv2d(
            bottleneck_channels, out_channels, 1, bias=False, norm=get_norm(norm, out_channels)
        )

    def _make_conv2(self, channels: int, stride: int, groups: int, norm: str, dilation: int) -> Conv2d:
        return Conv2d(
            channels, channels, 3, stride=stride, padding=dilation, bias=False, groups=groups,
            dilation=dilation, norm=get_norm(norm, channels),
        )  # fmt: skip

    def _conv2(self, x: Tensor) -> Tensor:
        return self.conv2(x)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self._conv2(out))
        out = self.conv3(out)
        out = out + (self.shortcut(x) if self.shortcut is not None else x)
        return F.relu_(out)


class DeformBottleneckBlock(BottleneckBlock):
    """A bottleneck block whose 3x3 convolution is deformable (DCNv1, or DCNv2 when modulated).

    The offsets come from ``conv2_offset``, a 3x3 convolution on the block's 1x1 output. In
    training mode, offsets (or masks) that are not finite raise :class:`FloatingPointError`
    (:func:`~dyhead_serve.ops.check_finite_offsets`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: str = "FrozenBN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
        deform_modulated: bool = False,
        deform_num_groups: int = 1,
    ) -> None:
        self.deform_modulated = deform_modulated
        self.deform_num_groups = deform_num_groups
        super().__init__(
            in_channels, out_channels, bottleneck_channels=bottleneck_channels, stride=stride,
            num_groups=num_groups, norm=norm, stride_in_1x1=stride_in_1x1, dilation=dilation,
        )  # fmt: skip
        stride_3x3 = 1 if stride_in_1x1 else stride
        offset_channels = (27 if deform_modulated else 18) * deform_num_groups
        self.conv2_offset = Conv2d(
            bottleneck_channels, offset_channels, 3, stride=stride_3x3, padding=dilation, dilation=dilation
        )
        nn.init.zeros_(self.conv2_offset.weight)
        assert self.conv2_offset.bias is not None
        nn.init.zeros_(self.conv2_offset.bias)

    def _conv2(self, x: Tensor) -> Tensor:
        offset_mask = self.conv2_offset(x)
        mask: Tensor | None = None
        if self.deform_modulated:
            num_offsets = offset_mask.shape[1] * 2 // 3
            offset, mask = offset_mask[:, :num_offsets], offset_mask[:, num_offsets:].sigmoid()
        else:
            offset = offset_mask
        if self.training:
            check_finite_offsets(offset, mask, "conv2 of a ResNet DeformBottleneckBlock")
        conv = self.conv2
        out = deform_conv2d(
            x, offset, conv.weight, None, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
            mask=mask,
        )  # fmt: skip
        return conv.norm(out) if conv.norm is not None else out


class ResNet(Backbone):
    """Stem followed by stages ``res2``..``res5``; returns the stages named in ``out_features``.

    Args:
        stem: the stride-4 stem.
        stages: blocks of each stage, in order (res2 first); only those up to the last
            requested output are built.
        out_features: names of the outputs (``stem``, ``res2``..``res5``).
        freeze_at: 0 freezes nothing, 1 the stem, k>1 the stem and the first k-1 stages.
    """

    def __init__(
        self,
        stem: BasicStem,
        stages: Sequence[Sequence[nn.Module]],
        out_features: Sequence[str],
        freeze_at: int = 0,
    ) -> None:
        super().__init__()
        self.stem = stem
        unknown = [f for f in out_features if f not in ("stem", *STAGE_NAMES)]
        if unknown:
            raise ValueError(f"unknown ResNet output(s) {unknown}; choose from stem, res2..res5")
        num_stages = max((STAGE_NAMES.index(f) + 1 for f in out_features if f != "stem"), default=0)
        self._out_features = list(out_features)
        self._shapes: dict[str, ShapeSpec] = {"stem": ShapeSpec(stem.out_channels, stem.stride)}
        self.stage_names: list[str] = []
        stride = stem.stride
        for name, blocks in zip(STAGE_NAMES[:num_stages], stages[:num_stages], strict=True):
            stage = nn.Sequential(*blocks)
            self.add_module(name, stage)
            self.stage_names.append(name)
            for block in blocks:
                stride *= int(getattr(block, "stride"))  # noqa: B009 - blocks are plain nn.Modules
            self._shapes[name] = ShapeSpec(int(getattr(blocks[-1], "out_channels")), stride)  # noqa: B009
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Stop gradients for the stem (``freeze_at >= 1``) and stages before ``freeze_at``."""
        if freeze_at >= 1:
            _freeze(self.stem)
        for idx, name in enumerate(self.stage_names, start=2):
            if freeze_at >= idx:
                _freeze(getattr(self, name))

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {name: self._shapes[name] for name in self._out_features}

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        outputs: dict[str, Tensor] = {}
        x = self.stem(images)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs


def build_resnet(
    *,
    depth: int,
    out_features: Sequence[str],
    in_channels: int = 3,
    norm: str = "FrozenBN",
    stem_out_channels: int = 64,
    res2_out_channels: int = 256,
    num_groups: int = 1,
    width_per_group: int = 64,
    stride_in_1x1: bool = True,
    res5_dilation: int = 1,
    deform_on_per_stage: Sequence[bool] = (False, False, False, False),
    deform_modulated: bool = False,
    deform_num_groups: int = 1,
    freeze_at: int = 0,
) -> ResNet:
    """Build a ResNet exactly as Detectron2's ``build_resnet_backbone`` does from its config keys."""
    if depth not in BLOCKS_PER_STAGE:
        raise ValueError(f"ResNet depth must be one of {sorted(BLOCKS_PER_STAGE)}, got {depth}")
    if res5_dilation not in (1, 2):
        raise ValueError(f"res5_dilation must be 1 or 2, got {res5_dilation}")
    if len(deform_on_per_stage) != 4:
        raise ValueError(f"deform_on_per_stage needs 4 entries (res2..res5), got {len(deform_on_per_stage)}")
    if depth in (18, 34):
        # Detectron2 insists on RES2_OUT_CHANNELS = 64 here; narrower BasicBlock networks are
        # our extension, used by the small embedded model (the official models are ResNet-50).
        if any(deform_on_per_stage):
            raise ValueError("ResNet-18/34 do not support deformable convolutions")
        if res5_dilation != 1:
            raise ValueError("ResNet-18/34 do not support RES5_DILATION != 1")
    stem = BasicStem(in_channels, stem_out_channels, norm)
    bottleneck_channels = num_groups * width_per_group
    stage_in, stage_out = stem_out_channels, res2_out_channels
    stages: list[list[nn.Module]] = []
    for idx, num_blocks in enumerate(BLOCKS_PER_STAGE[depth]):
        dilation = res5_dilation if idx == 3 else 1
        first_stride = 1 if idx == 0 or (idx == 3 and dilation == 2) else 2
        blocks: list[nn.Module] = []
        for i in range(num_blocks):
            stride = first_stride if i == 0 else 1
            block_in = stage_in if i == 0 else stage_out
            if depth in (18, 34):
                blocks.append(BasicBlock(block_in, stage_out, stride=stride, norm=norm))
            elif deform_on_per_stage[idx]:
                blocks.append(
                    DeformBottleneckBlock(
                        block_in,
                        stage_out,
                        bottleneck_channels=bottleneck_channels,
                        stride=stride,
                        num_groups=num_groups,
                        norm=norm,
                        stride_in_1x1=stride_in_1x1,
                        dilation=dilation,
                        deform_modulated=deform_modulated,
                        deform_num_groups=deform_num_groups,
                    )
                )
            else:
                blocks.append(
                    BottleneckBlock(
                        block_in,
                        stage_out,
                        bottleneck_channels=bottleneck_channels,
                        stride=stride,
                        num_groups=num_groups,
                        norm=norm,
                        stride_in_1x1=stride_in_1x1,
                        dilation=dilation,
                    )
                )
        stages.append(blocks)
        stage_in, stage_out, bottleneck_channels = stage_out, stage_out * 2, bottleneck_channels * 2
    return ResNet(stem, stages, out_features, freeze_at=freeze_at)
