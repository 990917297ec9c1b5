"""Pairwise intersection-over-union of axis-aligned boxes, as Detectron2 computes it."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["box_area", "pairwise_iou"]


def box_area(boxes: Tensor) -> Tensor:
    """Tensor[N, 4] (x0, y0, x1, y1) -> Tensor[N] areas (negative for inverted boxes)."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair: Tensor[N, 4], Tensor[M, 4] (x0, y0, x1, y1) -> Tensor[N, M].

    Pairs that do not intersect have IoU exactly 0, also when a box is empty (Detectron2's
    ``pairwise_iou``; torchvision's ``box_iou`` would give NaN for two empty boxes). The
    arithmetic follows Detectron2 operation for operation, so that thresholds compare equal
    values in both implementations.
    """
    area1 = box_area(boxes1)  # [N]
    area2 = box_area(boxes2)  # [M]
    width_height = torch.min(boxes1[:, None, 2:], boxes2[:, 2:]) - torch.max(
        boxes1[:, None, :2], boxes2[:, :2]
    )  # [N, M, 2]
    width_height.clamp_(min=0)
    intersection = width_height.prod(dim=2)  # [N, M]
    return torch.where(
        intersection > 0,
        intersection / (area1[:, None] + area2 - intersection),
        torch.zeros(1, dtype=intersection.dtype, device=intersection.device),
    )
