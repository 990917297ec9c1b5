"""Class-aware NMS as mmcv's ``batched_nms`` computes it (mmdetection's dense heads use it).

Class-aware NMS by coordinate offsets: every box is shifted by ``class * (max coordinate + 1)``
so that boxes of different classes never overlap, then one NMS runs over all of them. The shift
is not exact in float32 (at a shift of 10^5 the spacing of floats is 2^-7 px), so the overlaps
it computes, and which boxes it keeps, depend on the exact shift: reproducing mmdetection's
detections means shifting exactly as mmcv does, after the boxes were mapped back to the
original image (as mmdetection's ``_bbox_post_process`` does).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import nms

__all__ = ["SPLIT_THRESHOLD", "batched_nms_class_offset", "nms_mmcv"]

# mmcv runs one NMS per class instead when there are this many boxes or more (its split_thr).
SPLIT_THRESHOLD = 10000


def nms_mmcv(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS in mmcv's order and arithmetic.

    mmcv sorts the scores with ``scores.sort(descending=True)``, computes overlaps in float32
    (``inter / (area_i + area_j - inter)``, boxes ``(x0, y0, x1, y1)`` without the legacy +1) and
    suppresses when the overlap is greater than the threshold taken as a float32. torchvision's
    kernel computes the same overlaps; it sorts stably and compares with a float64 threshold, so
    it is handed boxes already in mmcv's order (with strictly decreasing stand-in scores) and the
    float32 threshold.

    Args:
        boxes: Tensor[K, 4] float32.
        scores: Tensor[K].
        iou_threshold: suppress overlaps above this.

    Returns:
        Tensor[M] int64: indices of the kept boxes, highest score first.
    """
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = scores.sort(0, descending=True)[1]
    ranks = torch.arange(boxes.shape[0], 0, -1, dtype=torch.float32, device=boxes.device)
    keep = nms(boxes[order].float(), ranks, float(np.float32(iou_threshold)))
    return order[keep]


def batched_nms_class_offset(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    iou_threshold: float,
    split_threshold: int = SPLIT_THRESHOLD,
) -> Tensor:
    """mmcv's ``batched_nms`` (class-aware, ``type='nms'``): indices of the kept boxes.

    Args:
        boxes: Tensor[K, 4] float32 (x0, y0, x1, y1).
        scores: Tensor[K].
        classes: Tensor[K] int64.
        iou_threshold: NMS threshold.
        split_threshold: from this many boxes on, one NMS per class (mmcv's ``split_thr``).

    Returns:
        Tensor[M] int64 indices into the inputs, highest score first.
    """
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    max_coordinate = boxes.max()
    offsets = classes.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    shifted = boxes + offsets[:, None]
    if shifted.shape[0] < split_threshold:
        return nms_mmcv(shifted, scores, iou_threshold)
    kept = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    for cls in torch.unique(classes):
        members = (classes == cls).nonzero(as_tuple=False).view(-1)
        kept[members[nms_mmcv(shifted[members], scores[members], iou_threshold)]] = True
    keep = kept.nonzero(as_tuple=False).view(-1)
    order = scores[keep].sort(descending=True)[1]
    return keep[order]
