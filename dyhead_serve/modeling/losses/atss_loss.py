"""The official DyHead ATSS training losses: focal classification, centerness-weighted GIoU box
regression, centerness binary cross-entropy."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dyhead_serve.decode.box_coding import BoxCoder
from dyhead_serve.distributed import all_reduce_sum, get_world_size
from dyhead_serve.modeling.losses.atss_assign import atss_assign
from dyhead_serve.modeling.losses.focal import sigmoid_focal_loss_from_labels
from dyhead_serve.modeling.losses.giou import atss_giou_loss

__all__ = ["ATSSLoss", "centerness_targets"]


def centerness_targets(box_targets: Tensor, anchors: Tensor) -> Tensor:
    """FCOS centerness of each anchor centre in its box.

    Args:
        box_targets: Tensor[P, 4] boxes (x0, y0, x1, y1) that contain the anchor centres.
        anchors: Tensor[P, 4] anchors.

    Returns:
        Tensor[P]: ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` with l, t, r, b the
        distances from the anchor centre to the box sides.
    """
    anchors_cx = (anchors[:, 2] + anchors[:, 0]) / 2
    anchors_cy = (anchors[:, 3] + anchors[:, 1]) / 2
    left = anchors_cx - box_targets[:, 0]
    top = anchors_cy - box_targets[:, 1]
    right = box_targets[:, 2] - anchors_cx
    bottom = box_targets[:, 3] - anchors_cy
    left_right = torch.stack([left, right], dim=1)
    top_bottom = torch.stack([top, bottom], dim=1)
    centerness = torch.sqrt(
        (left_right.min(dim=-1)[0] / left_right.max(dim=-1)[0])
        * (top_bottom.min(dim=-1)[0] / top_bottom.max(dim=-1)[0])
    )
    if bool(torch.isnan(centerness).any()):
        raise FloatingPointError("centerness target is NaN: an anchor centre lies on a box edge")
    return centerness


class ATSSLoss:
    """Losses of the official ``ATSS`` meta-architecture.

    - ``loss_cls``: sigmoid focal loss summed over every anchor and class, divided by the
      number of positive anchors averaged over processes (at least 1).
    - ``loss_box_reg``: ``REG_LOSS_WEIGHT`` times the GIoU loss of the decoded boxes of the
      positive anchors, weighted by their centerness targets and divided by the sum of those
      targets averaged over processes.
    - ``loss_ctr``: binary cross-entropy of the centerness logits against the centerness targets
      of the positive anchors, divided like ``loss_cls``.

    As in the official code, the regression targets are encoded as deltas and decoded again
    before use (a round trip through :class:`BoxCoder`, including its scale clamp).

    Args:
        box_coder: the ``BBOX_REG_WEIGHTS`` transform the head's deltas use.
        topk: ``MODEL.ATSS.TOPK``.
        num_anchors_per_location: anchors at each feature-map position.
        focal_alpha, focal_gamma: ``FOCAL_LOSS_ALPHA`` and ``FOCAL_LOSS_GAMMA``.
        reg_loss_weight: ``REG_LOSS_WEIGHT``.
    """

    def __init__(
        self,
        box_coder: BoxCoder,
        topk: int,
        num_anchors_per_location: int,
        focal_alpha: float,
        focal_gamma: float,
        reg_loss_weight: float,
    ) -> None:
        if topk < 1:
            raise ValueError(f"MODEL.ATSS.TOPK must be at least 1, got {topk}")
        self.box_coder = box_coder
        self.topk = topk
        self.num_anchors_per_location = num_anchors_per_location
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.reg_loss_weight = reg_loss_weight

    def state_dict(self) -> dict[str, float]:
        """ATSS keeps no state between iterations."""
        return {}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Nothing to restore (see :meth:`state_dict`)."""

    def __call__(
        self,
        outputs: dict[str, Tensor],
        anchors_per_level: Sequence[Tensor],
        gt_boxes: Sequence[Tensor],
        gt_classes: Sequence[Tensor],
    ) -> dict[str, Tensor]:
        """Compute the losses of a batch.

        Args:
            outputs: the head's ``logits`` Tensor[N, R, C], ``deltas`` Tensor[N, R, 4] and
                ``centerness`` Tensor[N, R].
            anchors_per_level: Tensor[R_l, 4] per level, sum_l R_l = R.
            gt_boxes: per image, Tensor[K_i, 4] boxes (x0, y0, x1, y1) in input pixels.
            gt_classes: per image, Tensor[K_i] class indices in [0, C).

        Returns:
            ``loss_cls``, ``loss_box_reg`` and ``loss_ctr``, scalar tensors.
        """
        logits = outputs["logits"].float()
        num_images, _, num_classes = logits.shape
        anchors = torch.cat(list(anchors_per_level))
        labels, reg_targets = [], []
        for boxes, classes in zip(gt_boxes, gt_classes, strict=True):
            image_labels, matched = atss_assign(
                anchors_per_level, boxes, classes, self.topk, self.num_anchors_per_location
            )
            labels.append(image_labels)
            reg_targets.append(self.box_coder.get_deltas(anchors, matched))

        logits_flat = logits.reshape(-1, num_classes)  # [N*R, C]
        deltas_flat = outputs["deltas"].float().reshape(-1, 4)
        centerness_flat = outputs["centerness"].float().reshape(-1)
        labels_flat = torch.cat(labels, dim=0)
        reg_targets_flat = torch.cat(reg_targets, dim=0)
        # Image-major, like the labels. (The official code repeats each level's anchors per
        # image instead, which pairs wrong anchors with levels > 0 when N > 1; for its square
        # anchors the centerness and GIoU values do not change, since both are invariant to the
        # translation and uniform scaling that the wrong anchor applies to both boxes.)
        anchors_flat = anchors.repeat(num_images, 1)

        pos_inds = torch.nonzero(labels_flat > 0).squeeze(1)
        num_processes = get_world_size()
        total_num_pos = all_reduce_sum(pos_inds.new_tensor([pos_inds.numel()])).item()
        num_pos_avg = max(total_num_pos / float(num_processes), 1.0)
        cls_loss = (
            sigmoid_focal_loss_from_labels(
                logits_flat, labels_flat.int(), self.focal_alpha, self.focal_gamma
            ).sum()
            / num_pos_avg
        )

        deltas_pos = deltas_flat[pos_inds]
        reg_targets_pos = reg_targets_flat[pos_inds]
        anchors_pos = anchors_flat[pos_inds]
        centerness_pos = centerness_flat[pos_inds]
        if pos_inds.numel() > 0:
            target_boxes = self.box_coder.apply_deltas(reg_targets_pos, anchors_pos)
            ctr_targets = centerness_targets(target_boxes, anchors_pos)
            ctr_sum_avg = all_reduce_sum(ctr_targets.sum()).item() / float(num_processes)
            pred_boxes = self.box_coder.apply_deltas(deltas_pos, anchors_pos)
            reg_loss = atss_giou_loss(pred_boxes, target_boxes, weight=ctr_targets) / ctr_sum_avg
            ctr_loss = (
                F.binary_cross_entropy_with_logits(centerness_pos, ctr_targets, reduction="sum") / num_pos_avg
            )
        else:
            # Zero losses that still depend on the outputs; the all-reduce keeps every process
            # making the same collective calls.
            reg_loss = deltas_pos.sum()
            all_reduce_sum(centerness_pos.new_tensor([0.0]))
            ctr_loss = centerness_pos.sum()
        return {
            "loss_cls": cls_loss,
            "loss_box_reg": reg_loss * self.reg_loss_weight,
            "loss_ctr": ctr_loss,
        }
