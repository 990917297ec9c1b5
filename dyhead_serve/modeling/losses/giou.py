"""Generalised IoU losses (Rezatofighi et al.) in the two forms the official models use.

- :func:`giou_loss`: Detectron2's (``fvcore.nn.giou_loss``), used by RetinaNet with
  ``BBOX_REG_LOSS_TYPE: giou``.
- :func:`atss_giou_loss`: the official DyHead ATSS ``GIoULoss``: predicted corners are first
  reordered (``x1 = max(x0, x1)``), the epsilons sit on the union and the enclosing area, and
  the per-box losses are weighted (by the centerness targets) before summing.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["atss_giou_loss", "giou_loss"]


def giou_loss(boxes: Tensor, target_boxes: Tensor, eps: float = 1e-7) -> Tensor:
    """Element-wise ``1 - GIoU``: Tensor[R, 4], Tensor[R, 4] (x0, y0, x1, y1) -> Tensor[R].

    Raises:
        ValueError: a box of ``boxes`` has ``x1 < x0`` or ``y1 < y0``.
    """
    x1, y1, x2, y2 = boxes.unbind(dim=-1)
    x1g, y1g, x2g, y2g = target_boxes.unbind(dim=-1)
    if bool((x2 < x1).any()) or bool((y2 < y1).any()):
        raise ValueError("giou_loss got a box with x1 < x0 or y1 < y0")
    xkis1 = torch.max(x1, x1g)
    ykis1 = torch.max(y1, y1g)
    xkis2 = torch.min(x2, x2g)
    ykis2 = torch.min(y2, y2g)
    intersection = torch.zeros_like(x1)
    overlap = (ykis2 > ykis1) & (xkis2 > xkis1)
    intersection[overlap] = (xkis2[overlap] - xkis1[overlap]) * (ykis2[overlap] - ykis1[overlap])
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intersection
    iou = intersection / (union + eps)
    enclosing = (torch.max(x2, x2g) - torch.min(x1, x1g)) * (torch.max(y2, y2g) - torch.min(y1, y1g))
    giou = iou - ((enclosing - union) / (enclosing + eps))
    return 1 - giou


def atss_giou_loss(boxes: Tensor, target_boxes: Tensor, weight: Tensor | None = None) -> Tensor:
    """Summed ``1 - GIoU`` of the official ATSS implementation.

    Args:
        boxes: Tensor[R, 4] predicted boxes (x0, y0, x1, y1); inverted corners are tolerated.
        target_boxes: Tensor[R, 4] target boxes.
        weight: Tensor[R] per-box weights; ignored (plain sum) when None or summing to 0, as
            in the official code.

    Returns:
        A scalar tensor.
    """
    pred_x1, pred_y1, pred_x2, pred_y2 = boxes.unbind(dim=1)
    pred_x2 = torch.max(pred_x1, pred_x2)
    pred_y2 = torch.max(pred_y1, pred_y2)
    pred_area = (pred_x2 - pred_x1) * (pred_y2 - pred_y1)
    target_x1, target_y1, target_x2, target_y2 = target_boxes.unbind(dim=1)
    target_area = (target_x2 - target_x1) * (target_y2 - target_y1)

    x1_intersect = torch.max(pred_x1, target_x1)
    y1_intersect = torch.max(pred_y1, target_y1)
    x2_intersect = torch.min(pred_x2, target_x2)
    y2_intersect = torch.min(pred_y2, target_y2)
    area_intersect = torch.zeros(pred_x1.size(), dtype=boxes.dtype, device=boxes.device)
    overlap = (y2_intersect > y1_intersect) & (x2_intersect > x1_intersect)
    area_intersect[overlap] = (x2_intersect[overlap] - x1_intersect[overlap]) * (
        y2_intersect[overlap] - y1_intersect[overlap]
    )
    x1_enclosing = torch.min(pred_x1, target_x1)
    y1_enclosing = torch.min(pred_y1, target_y1)
    x2_enclosing = torch.max(pred_x2, target_x2)
    y2_enclosing = torch.max(pred_y2, target_y2)
    area_enclosing = (x2_enclosing - x1_enclosing) * (y2_enclosing - y1_enclosing) + 1e-7
    area_union = pred_area + target_area - area_intersect + 1e-7
    ious = area_intersect / area_union
    gious = ious - (area_enclosing - area_union) / area_enclosing
    losses = 1 - gious
    if weight is not None and weight.sum() > 0:
        return (losses * weight).sum()
    if losses.numel() == 0:
        raise ValueError("atss_giou_loss needs at least one box")
    return losses.sum()
