"""Adaptive Training Sample Selection (Zhang et al., ATSS): which anchors are positive for which
ground-truth box, exactly as the official DyHead ``ATSS.label_anchors`` decides it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dyhead_serve.modeling.box_iou import pairwise_iou

__all__ = ["atss_assign"]

# The official code marks "not a candidate" with -1e8 before taking the best IoU.
_NOT_CANDIDATE = -1e8


@torch.no_grad()
def atss_assign(
    anchors_per_level: Sequence[Tensor],
    gt_boxes: Tensor,
    gt_classes: Tensor,
    topk: int,
    num_anchors_per_location: int,
) -> tuple[Tensor, Tensor]:
    """Label every anchor of one image.

    For each ground-truth box: on every level, the ``topk * num_anchors_per_location`` anchors
    whose centres are nearest to the box centre are candidates; a candidate is positive when its
    IoU with the box is at least the mean plus the (unbiased) standard deviation of the IoUs of
    all that box's candidates, and its centre lies inside the box by more than 0.01 pixel on
    every side. An anchor positive for several boxes goes to the box it overlaps most.

    Args:
        anchors_per_level: Tensor[R_l, 4] anchors (x0, y0, x1, y1) per level, in the order of
            the head's outputs.
        gt_boxes: Tensor[K, 4] ground-truth boxes of the image, in input pixels.
        gt_classes: Tensor[K] int64 class indices in [0, num_classes).
        topk: ``MODEL.ATSS.TOPK``, candidates per level and anchor shape.
        num_anchors_per_location: anchors at each feature-map position.

    Returns:
        labels: Tensor[R] int64: 0 for background, ``class + 1`` for a positive anchor.
        matched_boxes: Tensor[R, 4]: the ground-truth box each anchor is assigned to (the
            first box for background anchors; only meaningful where ``labels > 0``).
        With K == 0 every anchor is background (the official code fails there).
    """
    anchors = torch.cat(list(anchors_per_level))
    num_anchors = anchors.shape[0]
    num_gt = gt_boxes.shape[0]
    if num_gt == 0:
        return (
            torch.zeros(num_anchors, dtype=torch.int64, device=anchors.device),
            torch.zeros_like(anchors),
        )
    gt_boxes = gt_boxes.to(anchors.dtype)
    labels_per_gt = gt_classes.to(torch.int64) + 1
    ious = pairwise_iou(anchors, gt_boxes)  # [R, K]

    gt_cx = (gt_boxes[:, 2] + gt_boxes[:, 0]) / 2.0
    gt_cy = (gt_boxes[:, 3] + gt_boxes[:, 1]) / 2.0
    gt_points = torch.stack((gt_cx, gt_cy), dim=1)  # [K, 2]
    anchors_cx = (anchors[:, 2] + anchors[:, 0]) / 2.0
    anchors_cy = (anchors[:, 3] + anchors[:, 1]) / 2.0
    anchor_points = torch.stack((anchors_cx, anchors_cy), dim=1)  # [R, 2]
    distances = (anchor_points[:, None, :] - gt_points[None, :, :]).pow(2).sum(-1).sqrt()  # [R, K]

    # Candidates: the nearest anchors of every level.
    candidate_idxs = []
    start = 0
    for level_anchors in anchors_per_level:
        end = start + level_anchors.shape[0]
        k = min(topk * num_anchors_per_location, level_anchors.shape[0])
        _, nearest = distances[start:end, :].topk(k, dim=0, largest=False)
        candidate_idxs.append(nearest + start)
        start = end
    candidates = torch.cat(candidate_idxs, dim=0)  # [T, K]

    # Adaptive IoU threshold per box: mean + std of its candidates' IoUs.
    candidate_ious = ious[candidates, torch.arange(num_gt, device=anchors.device)]  # [T, K]
    iou_threshold = candidate_ious.mean(0) + candidate_ious.std(0)
    is_pos = candidate_ious >= iou_threshold[None, :]

    # The candidate's centre must lie inside the box.
    left = anchors_cx[candidates] - gt_boxes[:, 0]
    top = anchors_cy[candidates] - gt_boxes[:, 1]
    right = gt_boxes[:, 2] - anchors_cx[candidates]
    bottom = gt_boxes[:, 3] - anchors_cy[candidates]
    is_in_gt = torch.stack([left, top, right, bottom], dim=1).min(dim=1)[0] > 0.01
    is_pos = is_pos & is_in_gt

    # An anchor positive for several boxes goes to the one with the highest IoU. The flat
    # (box-major) layout and the transposed max follow the official code, so that ties break
    # the same way.
    flat_candidates = (candidates + torch.arange(num_gt, device=anchors.device) * num_anchors).view(-1)
    ious_or_not = torch.full_like(ious, _NOT_CANDIDATE).t().contiguous().view(-1)  # [K * R]
    chosen = flat_candidates[is_pos.view(-1)]
    ious_or_not[chosen] = ious.t().contiguous().view(-1)[chosen]
    best_iou, best_gt = ious_or_not.view(num_gt, -1).t().max(dim=1)  # [R]

    labels = labels_per_gt[best_gt]
    labels[best_iou == _NOT_CANDIDATE] = 0
    return labels, gt_boxes[best_gt]
