"""Task-aware attention: dynamic ReLU (DyReLU-B) with a hard sigmoid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LAYOUTS", "ConvActivation", "DyReLU", "HardSigmoid", "check_layout"]

# Parameter layouts of the DyHead modules: "official" names parameters as the DynamicHead
# (Detectron2) code does, "mmdet" as mmdetection 3.x does; each layout also reproduces that
# implementation's arithmetic.
LAYOUTS = ("official", "mmdet")


def check_layout(layout: str) -> str:
    """Return ``layout`` if it is one of :data:`LAYOUTS`; raise ValueError otherwise."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown parameter layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    return layout


class HardSigmoid(nn.Module):
    """``relu6(x + 3) / 6``, written as the official code computes it (``* h_max / 6``).

    mmcv's ``HSigmoid(bias=3, divisor=6)``, ``clamp((x + 3) / 6, 0, 1)``, gives the same bits:
    both divide the same ``x + 3`` by 6 where it lies in [0, 6] and saturate elsewhere.
    """

    def __init__(self, h_max: float = 1.0) -> None:
        super().__init__()
        self.h_max = h_max

    def forward(self, x: Tensor) -> Tensor:
        return F.relu6(x + 3) * self.h_max / 6


class ConvActivation(nn.Module):
    """A 1x1 convolution followed by an activation, named as mmcv's ``ConvModule`` (``conv``)."""

    def __init__(self, in_channels: int, out_channels: int, activation: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.activate = activation

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.conv(x))


class DyReLU(nn.Module):
    """Dynamic ReLU: ``max(a1 * x + b1, a2 * x + b2)`` with per-image, per-channel coefficients.

    The coefficients come from a squeeze-excite style MLP on the globally pooled input, ending in
    a hard sigmoid ``y``, centred and scaled as in the official implementation:
    ``a1 = (y - 0.5) * 2 + 1``, ``a2 = (y - 0.5) * 2``, ``b = y - 0.5``.

    Args:
        in_channels, out_channels: channels of the input and output.
        reduction: squeeze ratio of the MLP's hidden layer.
        layout: ``"official"``: the MLP is ``fc`` (Linear -> ReLU -> Linear -> hard sigmoid) on
            the pooled vector; ``"mmdet"``: ``conv1`` and ``conv2``, 1x1 convolutions on the
            pooled 1x1 map, as mmdetection's ``DyReLU``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, reduction: int = 4, layout: str = "official"
    ) -> None:
        super().__init__()
        self.layout = check_layout(layout)
        self.out_channels = out_channels
        self.lambda_a = 2.0
        self.init_a = (1.0, 0.0)
        self.init_b = (0.0, 0.0)
        squeeze = in_channels // reduction
        if layout == "official":
            self.fc = nn.Sequential(
                nn.Linear(in_channels, squeeze),
                nn.ReLU(inplace=True),
                nn.Linear(squeeze, out_channels * 4),
                HardSigmoid(),
            )
        else:
            self.conv1 = ConvActivation(in_channels, squeeze, nn.ReLU(inplace=True))
            self.conv2 = ConvActivation(squeeze, out_channels * 4, HardSigmoid())

    def _coefficients(self, x: Tensor) -> Tensor:
        """Tensor[N, C, H, W] -> hard-sigmoid outputs Tensor[N, 4 * out_channels, 1, 1]."""
        n, c = x.shape[:2]
        if self.layout == "official":
            y = F.adaptive_avg_pool2d(x, 1).reshape(n, c)
            return self.fc(y).reshape(n, self.out_channels * 4, 1, 1)
        return self.conv2(self.conv1(F.adaptive_avg_pool2d(x, 1)))

    def forward(self, x: Tensor) -> Tensor:
        """Tensor[N, C, H, W] -> Tensor[N, C, H, W]."""
        a1, b1, a2, b2 = torch.split(self._coefficients(x), self.out_channels, dim=1)
        a1 = (a1 - 0.5) * self.lambda_a + self.init_a[0]
        a2 = (a2 - 0.5) * self.lambda_a + self.init_a[1]
        b1 = b1 - 0.5 + self.init_b[0]
        b2 = b2 - 0.5 + self.init_b[1]
        return torch.max(x * a1 + b1, x * a2 + b2)
