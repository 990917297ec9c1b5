"""Task-aware attention: dynamic ReLU (DyReLU-B) with a hard sigmoid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DyReLU", "HardSigmoid"]


class HardSigmoid(nn.Module):
    """``relu6(x + 3) / 6``, written as the official code computes it (``* h_max / 6``)."""

    def __init__(self, h_max: float = 1.0) -> None:
        super().__init__()
        self.h_max = h_max

    def forward(self, x: Tensor) -> Tensor:
        return F.relu6(x + 3) * self.h_max / 6


class DyReLU(nn.Module):
    """Dynamic ReLU: ``max(a1 * x + b1, a2 * x + b2)`` with per-image, per-channel coefficients.

    The coefficients come from a squeeze-excite style MLP on the globally pooled input
    (``fc``: Linear -> ReLU -> Linear -> hard sigmoid), centred and scaled as in the official
    implementation: ``a1 = (y - 0.5) * 2 + 1``, ``a2 = (y - 0.5) * 2``, ``b = y - 0.5``.

    Args:
        in_channels, out_channels: channels of the input and output.
        reduction: squeeze ratio of the MLP's hidden layer.
    """

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.lambda_a = 2.0
        self.init_a = (1.0, 0.0)
        self.init_b = (0.0, 0.0)
        squeeze = in_channels // reduction
        self.fc = nn.Sequential(
            nn.Linear(in_channels, squeeze),
            nn.ReLU(inplace=True),
            nn.Linear(squeeze, out_channels * 4),
            HardSigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Tensor[N, C, H, W] -> Tensor[N, C, H, W]."""
        n, c = x.shape[:2]
        y = F.adaptive_avg_pool2d(x, 1).reshape(n, c)
        y = self.fc(y).reshape(n, self.out_channels * 4, 1, 1)
        a1, b1, a2, b2 = torch.split(y, self.out_channels, dim=1)
        a1 = (a1 - 0.5) * self.lambda_a + self.init_a[0]
        a2 = (a2 - 0.5) * self.lambda_a + self.init_a[1]
        b1 = b1 - 0.5 + self.init_b[0]
        b2 = b2 - 0.5 + self.init_b[1]
        return torch.max(x * a1 + b1, x * a2 + b2)
