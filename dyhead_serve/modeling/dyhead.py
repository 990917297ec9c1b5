"""The DyHead tower: scale-, spatial- and task-aware attention over a feature pyramid.

Two parameter layouts (:data:`~dyhead_serve.modeling.dyrelu.LAYOUTS`) build the same blocks:

- ``"official"``: module and parameter names of the official DynamicHead code (``DyConv``,
  ``AttnConv``, ``relu``, ``offset``), so that its checkpoints load unchanged;
- ``"mmdet"``: those of mmdetection's ``DyHeadBlock`` (``spatial_conv_{high,mid,low}`` without
  conv bias, ``spatial_conv_offset``, ``scale_attn_module``, ``task_attn_module``), computed in
  mmdetection's order (a running sum of the attended levels divided by their count).

:class:`DyHead` is the tower on its own, a neck for any feature pyramid; :class:`DyHeadBackbone`
puts it on an FPN inside our detectors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dyhead_serve.modeling.backbone.base import Backbone
from dyhead_serve.modeling.dyrelu import DyReLU, HardSigmoid, check_layout
from dyhead_serve.modeling.shape_spec import ShapeSpec
from dyhead_serve.ops import ModulatedDeformConv2d

__all__ = ["DyHead", "DyHeadBackbone", "DyHeadBlock", "ModulatedConv3x3Norm", "dyhead_blocks"]

_OFFSETS = 18  # (dy, dx) for each of the 9 kernel points; the 9 mask logits follow


class ModulatedConv3x3Norm(nn.Module):
    """3x3 modulated deformable convolution followed by GroupNorm(16).

    ``layout="official"``: the convolution has a bias and the norm is named ``bn``;
    ``"mmdet"``: no bias (the norm follows) and the norm is named ``norm``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, layout: str = "official") -> None:
        super().__init__()
        check_layout(layout)
        self.conv = ModulatedDeformConv2d(
            in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=layout == "official"
        )
        norm = nn.GroupNorm(num_groups=16, num_channels=out_channels)
        self.add_module("bn" if layout == "official" else "norm", norm)
        self._norm = [norm]  # a plain list: the module is registered above under its layout's name

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        return self._norm[0](self.conv(x.contiguous(), offset, mask))


class DyHeadBlock(nn.Module):
    """One DyHead block.

    For each pyramid level ``l`` it computes a 27-channel map from ``x[l]`` (18 offsets, then 9
    mask logits) and applies it in three deformable convolutions: the "mid" one on ``x[l]``, the
    "low" one (stride 2) on the finer ``x[l-1]`` and the "high" one on the coarser ``x[l+1]``,
    whose output is then upsampled (bilinear, ``align_corners=True``) to level ``l``'s size. For
    the coarser level the map is larger than the output and is read as the official kernel reads
    it (see :mod:`dyhead_serve.ops.deform_conv`). Each result is weighted by the scale-aware
    attention (pool, 1x1 conv, ReLU, hard sigmoid), the results are averaged and passed through
    the task-aware DyReLU.

    Args:
        in_channels, out_channels: channels of every input and output level.
        layout: ``"official"`` (``DyConv[0/1/2]`` = high/mid/low, ``AttnConv`` + ``h_sigmoid``,
            ``relu``, ``offset``) or ``"mmdet"`` (``spatial_conv_high/mid/low``,
            ``scale_attn_module``, ``task_attn_module``, ``spatial_conv_offset``).
    """

    def __init__(self, in_channels: int = 256, out_channels: int = 256, layout: str = "official") -> None:
        super().__init__()
        self.layout = check_layout(layout)
        # Modules are created in each implementation's order, so that a seeded initialisation
        # draws the same random numbers as before and registration gives its state_dict order.
        high = ModulatedConv3x3Norm(in_channels, out_channels, 1, layout)
        mid = ModulatedConv3x3Norm(in_channels, out_channels, 1, layout)
        low = ModulatedConv3x3Norm(in_channels, out_channels, 2, layout)
        scale_attention: nn.Module
        if layout == "official":
            self.DyConv = nn.ModuleList([high, mid, low])
            # Both act on the convolutions' outputs: out_channels (the official code says
            # in_channels, the same number in every official model).
            self.AttnConv = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Conv2d(out_channels, 1, kernel_size=1), nn.ReLU(inplace=True)
            )
            self.h_sigmoid = HardSigmoid()
            self.relu = task = DyReLU(out_channels, out_channels)
            self.offset = offset = nn.Conv2d(in_channels, 27, kernel_size=3, stride=1, padding=1)
            attention = self.AttnConv
            scale_attention = nn.Sequential(self.AttnConv, self.h_sigmoid)
        else:
            self.spatial_conv_high, self.spatial_conv_mid, self.spatial_conv_low = high, mid, low
            self.spatial_conv_offset = offset = nn.Conv2d(in_channels, 27, kernel_size=3, padding=1)
            self.scale_attn_module = attention = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Conv2d(out_channels, 1, kernel_size=1), nn.ReLU(inplace=True),
                HardSigmoid(),
            )  # fmt: skip
            self.task_attn_module = task = DyReLU(out_channels, out_channels, layout="mmdet")
            scale_attention = attention
        # Plain lists: the modules are registered above under their layout's names.
        self._convs = [high, mid, low]
        self._offset = [offset]
        self._scale_attention = [scale_attention]
        self._task_attention = [task]
        for module in [*high.modules(), *mid.modules(), *low.modules(), *attention.modules()]:
            if isinstance(module, nn.Conv2d | ModulatedDeformConv2d):
                nn.init.normal_(module.weight, 0, 0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Levels finest first, each Tensor[N, C_in, H_l, W_l] -> Tensor[N, C_out, H_l, W_l]."""
        high, mid, low = self._convs
        scale_attention = self._scale_attention[0]
        outputs = []
        for level, feature in enumerate(features):
            offset_mask = self._offset[0](feature)  # [N, 27, H, W]
            offset = offset_mask[:, :_OFFSETS]
            mask = offset_mask[:, _OFFSETS:].sigmoid()
            branches = [mid(feature, offset, mask)]
            if level > 0:
                branches.append(low(features[level - 1], offset, mask))
            if level < len(features) - 1:
                coarser = high(features[level + 1], offset, mask)
                branches.append(
                    F.interpolate(coarser, size=feature.shape[-2:], mode="bilinear", align_corners=True)
                )
            if self.layout == "official":
                stacked = torch.stack(branches)  # [B, N, C, H, W]
                attention = torch.stack([scale_attention(b) for b in branches])  # [B, N, 1, 1, 1]
                combined = torch.mean(stacked * attention, dim=0)
            else:
                combined = branches[0] * scale_attention(branches[0])
                for branch in branches[1:]:
                    combined = combined + branch * scale_attention(branch)
                combined = combined / len(branches)
            outputs.append(self._task_attention[0](combined))
        return outputs


def dyhead_blocks(
    in_channels: int, channels: int, num_blocks: int, layout: str = "official"
) -> nn.Sequential:
    """``num_blocks`` :class:`DyHeadBlock` s: the first maps ``in_channels`` to ``channels``."""
    if num_blocks < 1:
        raise ValueError(f"DyHead needs at least one block, got {num_blocks}")
    return nn.Sequential(
        *[DyHeadBlock(in_channels if i == 0 else channels, channels, layout) for i in range(num_blocks)]
    )


class DyHead(nn.Module):
    """DyHead as a neck: a stack of :class:`DyHeadBlock` s over any feature pyramid.

    Put it after an FPN of your own: it takes the pyramid's levels, finest first, all with
    ``in_channels`` channels, each level half the size of the previous one (rounded up, as
    stride-2 convolutions and poolings give), and returns as many levels with ``out_channels``
    channels and the same sizes.

    Args:
        in_channels: channels of every input level.
        out_channels: channels of every output level (default: ``in_channels``).
        num_blocks: number of blocks (6 in the published models).
        layout: parameter names and arithmetic, ``"official"`` (the blocks are ``dyhead_tower.N``,
            as the DynamicHead checkpoints store them under ``backbone.``) or ``"mmdet"``
            (``dyhead_blocks.N``, as mmdetection's ``DyHead`` neck, stored under ``neck.1.``).

    Example (weights of an mmdetection DyHead model, whose neck is ``neck.1``)::

        neck = DyHead(256, num_blocks=6, layout="mmdet")
        state = read_state_dict("atss_r50_fpn_dyhead_4x4_1x_coco_20211219_023314-eaa620c6.pth")
        prefix = "neck.1."
        neck.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})
        levels = neck([p3, p4, p5, p6, p7])
    """

    def __init__(
        self, in_channels: int, out_channels: int | None = None, num_blocks: int = 6, layout: str = "official"
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels if out_channels is not None else in_channels
        blocks = dyhead_blocks(in_channels, self.out_channels, num_blocks, check_layout(layout))
        self.add_module("dyhead_tower" if layout == "official" else "dyhead_blocks", blocks)
        self._blocks = [blocks]  # a plain list: registered above under the layout's name

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Levels finest first, Tensor[N, in_channels, H_l, W_l] each -> Tensor[N, out_channels,
        H_l, W_l] each.

        Raises:
            ValueError: no levels, a level without ``in_channels`` channels, or a level that is
                not the previous one halved (rounded up).
        """
        levels = list(features)
        if not levels:
            raise ValueError("DyHead needs at least one feature level")
        for i, level in enumerate(levels):
            if level.dim() != 4 or level.shape[1] != self.in_channels:
                expected_shape = f"[N, {self.in_channels}, H, W]"
                raise ValueError(
                    f"level {i} has shape {tuple(level.shape)}; every level must be {expected_shape}"
                )
            if i > 0:
                expected = tuple(-(-int(s) // 2) for s in levels[i - 1].shape[-2:])
                if tuple(int(s) for s in level.shape[-2:]) != expected:
                    raise ValueError(
                        f"level {i} is {tuple(level.shape[-2:])}, level {i - 1} is "
                        f"{tuple(levels[i - 1].shape[-2:])}: each level must be the previous one halved "
                        f"(rounded up), here {expected}"
                    )
        for block in self._blocks[0]:
            levels = block(levels)
        return levels


class DyHeadBackbone(Backbone):
    """An FPN (``backbone``) followed by a tower of :class:`DyHeadBlock` s (``dyhead_tower``).

    Returns the same level names and strides as the FPN, each with ``channels`` channels. The
    tower is registered as ``dyhead_tower`` in either layout (an mmdetection checkpoint's
    ``neck.1.dyhead_blocks.N`` maps onto ``backbone.dyhead_tower.N``).
    """

    def __init__(self, fpn: Backbone, num_blocks: int, channels: int, layout: str = "official") -> None:
        super().__init__()
        self.backbone = fpn
        fpn_shapes = fpn.output_shape()
        in_channels = {s.channels for s in fpn_shapes.values()}
        if len(in_channels) != 1:
            raise ValueError(f"DyHead needs equal channels on every level, got {fpn_shapes}")
        self.dyhead_tower = dyhead_blocks(in_channels.pop(), channels, num_blocks, layout)
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
