"""Flattening of per-level dense predictions into one anchor-ordered tensor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["flatten_levels"]


def flatten_levels(per_level: Sequence[Tensor], values_per_anchor: int) -> Tensor:
    """Tensor[N, A*K, H_l, W_l] per level -> Tensor[N, sum_l H_l*W_l*A, K], ordered (level, y, x, anchor)
    like the anchors."""
    flat = []
    for x in per_level:
        n, _, h, w = x.shape
        flat.append(
            x.reshape(n, -1, values_per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, values_per_anchor)
        )
    return torch.cat(flat, dim=1)
