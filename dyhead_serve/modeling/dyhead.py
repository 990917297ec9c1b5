"""The DyHead tower: scale-, spatial- and task-aware attention over a feature pyramid.

Module and parameter names follow the official implementation (``DyConv``, ``AttnConv``,
``relu``, ``offset``) so that its checkpoints load unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dyhead_serve.modeling.backbone.base import Backbone
from dyhead_serve.modeling.dyrelu import DyReLU, HardSigmoid
from dyhead_serve.modeling.shape_spec import ShapeSpec
from dyhead_serve.ops import ModulatedDeformConv2d

__all__ = ["DyConv", "DyHeadBackbone", "ModulatedConv3x3Norm"]


class ModulatedConv3x3Norm(nn.Module):
    """3x3 modulated deformable convolution followed by GroupNorm(16)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = ModulatedDeformConv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)
        self.bn = nn.GroupNorm(num_groups=16, num_channels=out_channels)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        return self.bn(self.conv(x.contiguous(), offset, mask))


class DyConv(nn.Module):
    """One DyHead block.

    For each pyramid level ``l`` it computes a 27-channel map from ``x[l]`` (18 offsets, then 9
    mask logits) and applies it in three deformable convolutions: ``DyConv[1]`` on ``x[l]``,
    ``DyConv[2]`` (stride 2) on the finer ``x[l-1]`` and ``DyConv[0]`` on the coarser ``x[l+1]``,
    whose output is then upsampled (bilinear, ``align_corners=True``) to level ``l``'s size. For
    the coarser level the map is larger than the output and is read as the official kernel reads
    it (see :mod:`dyhead_serve.ops.deform_conv`). The results are weighted by the scale-aware
    attention (``AttnConv``: pool, 1x1 conv, ReLU, hard sigmoid), averaged, and passed through the
    task-aware DyReLU.
    """

    def __init__(self, in_channels: int = 256, out_channels: int = 256) -> None:
        super().__init__()
        self.DyConv = nn.ModuleList(
            [
                ModulatedConv3x3Norm(in_channels, out_channels, 1),
                ModulatedConv3x3Norm(in_channels, out_channels, 1),
                ModulatedConv3x3Norm(in_channels, out_channels, 2),
            ]
        )
        self.AttnConv = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, 1, kernel_size=1), nn.ReLU(inplace=True)
        )
        self.h_sigmoid = HardSigmoid()
        self.relu = DyReLU(in_channels, out_channels)
        self.offset = nn.Conv2d(in_channels, 27, kernel_size=3, stride=1, padding=1)
        for module in [*self.DyConv.modules(), *self.AttnConv.modules()]:
            if isinstance(module, nn.Conv2d | ModulatedDeformConv2d):
                nn.init.normal_(module.weight, 0, 0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Levels finest first, each Tensor[N, C, H_l, W_l] -> the same shapes."""
        outputs = []
        for level, feature in enumerate(features):
            offset_mask = self.offset(feature)  # [N, 27, H, W]
            offset = offset_mask[:, :18]
            mask = offset_mask[:, 18:].sigmoid()
            branches = [self.DyConv[1](feature, offset, mask)]
            if level > 0:
                branches.append(self.DyConv[2](features[level - 1], offset, mask))
            if level < len(features) - 1:
                coarser = self.DyConv[0](features[level + 1], offset, mask)
                branches.append(
                    F.interpolate(coarser, size=feature.shape[-2:], mode="bilinear", align_corners=True)
                )
            stacked = torch.stack(branches)  # [B, N, C, H, W]
            attention = self.h_sigmoid(torch.stack([self.AttnConv(b) for b in branches]))  # [B, N, 1, 1, 1]
            outputs.append(self.relu(torch.mean(stacked * attention, dim=0)))
        return outputs


class DyHeadBackbone(Backbone):
    """An FPN (``backbone``) followed by a tower of :class:`DyConv` blocks (``dyhead_tower``).

    Returns the same level names and strides as the FPN, each with ``channels`` channels.
    """

    def __init__(self, fpn: Backbone, num_blocks: int, channels: int) -> None:
        super().__init__()
        self.backbone = fpn
        fpn_shapes = fpn.output_shape()
        in_channels = {s.channels for s in fpn_shapes.values()}
        if len(in_channels) != 1:
            raise ValueError(f"DyHead needs equal channels on every level, got {fpn_shapes}")
        first = in_channels.pop()
        self.dyhead_tower = nn.Sequential(
            *[DyConv(first if i == 0 else channels, channels) for i in range(num_blocks)]
        )
        self._shapes = {name: ShapeSpec(channels, s.stride) for name, s in fpn_shapes.items()}

    @property
    def size_divisibility(self) -> int:
        return list(self._shapes.values())[-1].stride

    def output_shape(self) -> dict[str, ShapeSpec]:
        return dict(self._shapes)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        pyramid = self.backbone(images)
        levels = list(pyramid.values())
        for block in self.dyhead_tower:
            levels = block(levels)
        return dict(zip(pyramid.keys(), levels, strict=True))
