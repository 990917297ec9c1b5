"""Feature Pyramid Network in Detectron2's form, with the P6/P7 and max-pool top blocks."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from dyhead_serve.modeling.backbone.base import Backbone
from dyhead_serve.modeling.layers import Conv2d, get_norm
from dyhead_serve.modeling.shape_spec import ShapeSpec

__all__ = ["FPN", "LastLevelMaxPool", "LastLevelP6P7"]


def _xavier_fill(module: nn.Conv2d) -> None:
    """Caffe2's XavierFill: uniform with a = sqrt(3 / fan_in), zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class LastLevelMaxPool(nn.Module):
    """P6 as a stride-2 subsampling of P5 (Faster R-CNN FPN)."""

    num_levels = 1

    def __init__(self) -> None:
        super().__init__()
        self.in_feature = "p5"

    def forward(self, x: Tensor) -> list[Tensor]:
        return [F.max_pool2d(x, kernel_size=1, stride=2, padding=0)]


class LastLevelP6P7(nn.Module):
    """P6 and P7 from two stride-2 3x3 convolutions (RetinaNet/ATSS FPN).

    Args:
        in_feature: ``"p5"`` (DyHead's choice) or ``"res5"`` (RetinaNet's original).
        relu_before_p7: apply a ReLU to P6 before computing P7 (Detectron2); mmdetection's FPN
            does not by default (``relu_before_extra_convs=False``).
    """

    num_levels = 2

    def __init__(
        self, in_channels: int, out_channels: int, in_feature: str = "p5", relu_before_p7: bool = True
    ) -> None:
        super().__init__()
        self.in_feature = in_feature
        self.relu_before_p7 = relu_before_p7
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in (self.p6, self.p7):
            _xavier_fill(module)

    def forward(self, x: Tensor) -> list[Tensor]:
        p6 = self.p6(x)
        p7 = self.p7(F.relu(p6) if self.relu_before_p7 else p6)
        return [p6, p7]


class FPN(Backbone):
    """Top-down pathway with lateral connections over a bottom-up backbone.

    Args:
        bottom_up: the backbone whose outputs feed the pyramid.
        in_features: names of the bottom-up outputs to use, finest first; their strides must be
            consecutive powers of two.
        out_channels: channels of every pyramid level.
        norm: normalisation after each FPN convolution (``""``: none, convolutions get a bias).
        top_block: extra coarser levels computed from P5 or ``res5``.
        fuse_type: ``"sum"`` or ``"avg"`` of lateral and top-down features.

    Outputs are named ``p{log2(stride)}`` (``p3``..``p7`` for RetinaNet-style pyramids).
    """

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: Sequence[str],
        out_channels: int,
        norm: str = "",
        top_block: LastLevelP6P7 | LastLevelMaxPool | None = None,
        fuse_type: str = "sum",
    ) -> None:
        super().__init__()
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"FPN fuse_type must be 'sum' or 'avg', got {fuse_type!r}")
        input_shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in input_shapes]
        if missing:
            raise ValueError(f"FPN input(s) {missing} are not backbone outputs {list(input_shapes)}")
        strides = [input_shapes[f].stride for f in in_features]
        for prev, cur in itertools.pairwise(strides):
            if cur != 2 * prev:
                raise ValueError(f"FPN input strides must double from level to level, got {strides}")

        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        for in_feature, stride in zip(in_features, strides, strict=True):
            stage = int(math.log2(stride))
            lateral = Conv2d(
                input_shapes[in_feature].channels, out_channels, kernel_size=1, bias=use_bias,
                norm=get_norm(norm, out_channels),
            )  # fmt: skip
            output = Conv2d(
                out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=use_bias,
                norm=get_norm(norm, out_channels),
            )  # fmt: skip
            for module in (lateral, output):
                _xavier_fill(module)
            self.add_module(f"fpn_lateral{stage}", lateral)
            self.add_module(f"fpn_output{stage}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
        # Coarsest first, the order of the top-down pass. Plain lists: the modules are
        # registered above under Detectron2's names.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]
        self.top_block = top_block
        self.in_features = tuple(in_features)
        self.bottom_up = bottom_up
        self._fuse_type = fuse_type

        self._strides = {f"p{int(math.log2(s))}": s for s in strides}
        if top_block is not None:
            last = int(math.log2(strides[-1]))
            for level in range(last + 1, last + 1 + top_block.num_levels):
                self._strides[f"p{level}"] = 2**level
        self._out_channels = out_channels
        self._size_divisibility = strides[-1]

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {name: ShapeSpec(self._out_channels, stride) for name, stride in self._strides.items()}

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        bottom_up = self.bottom_up(images)
        prev = self.lateral_convs[0](bottom_up[self.in_features[-1]])
        results = [self.output_convs[0](prev)]
        for idx in range(1, len(self.lateral_convs)):
            top_down = F.interpolate(prev, scale_factor=2.0, mode="nearest")
            prev = self.lateral_convs[idx](bottom_up[self.in_features[-idx - 1]]) + top_down
            if self._fuse_type == "avg":
                prev = prev / 2
            results.insert(0, self.output_convs[idx](prev))
        names = list(self._strides)
        if self.top_block is not None:
            source = self.top_block.in_feature
            top_input = bottom_up[source] if source in bottom_up else results[names.index(source)]
            results.extend(self.top_block(top_input))
        return dict(zip(names, results, strict=True))
