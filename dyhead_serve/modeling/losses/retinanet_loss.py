"""Detectron2's RetinaNet training losses: focal classification and smooth-L1 (or GIoU) box
regression, both divided by a moving average of the number of positive anchors."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dyhead_serve.decode.box_coding import BoxCoder
from dyhead_serve.modeling.box_iou import pairwise_iou
from dyhead_serve.modeling.losses.focal import sigmoid_focal_loss
from dyhead_serve.modeling.losses.giou import giou_loss
from dyhead_serve.modeling.losses.smooth_l1 import smooth_l1_loss
from dyhead_serve.modeling.matcher import Matcher

__all__ = ["BOX_REG_LOSS_TYPES", "RetinaNetLoss"]

BOX_REG_LOSS_TYPES = ("smooth_l1", "giou")


class RetinaNetLoss:
    """Losses of Detectron2's ``RetinaNet``.

    Anchors are labelled by :class:`Matcher` on their IoU with the ground truth. ``loss_cls``
    is the sigmoid focal loss over every non-ignored anchor (the background class has no
    logit), ``loss_box_reg`` the smooth-L1 loss of the deltas (or the GIoU loss of the decoded
    boxes) of the positive anchors; both are summed and divided by the loss normaliser, an
    exponential moving average of ``max(positives in the batch, 1)`` that starts at
    ``normalizer_init``. As in Detectron2 the positives are counted on this process only.

    Args:
        num_classes: foreground classes.
        box_coder: the ``BBOX_REG_WEIGHTS`` transform the head's deltas use.
        matcher: anchor labelling (``IOU_THRESHOLDS``, ``IOU_LABELS``, low-quality matches).
        focal_alpha, focal_gamma: ``FOCAL_LOSS_ALPHA`` and ``FOCAL_LOSS_GAMMA``.
        smooth_l1_beta: ``SMOOTH_L1_LOSS_BETA`` (0: L1).
        box_reg_loss_type: ``BBOX_REG_LOSS_TYPE``, ``"smooth_l1"`` or ``"giou"``.
        normalizer_init, normalizer_momentum: the moving average's start and momentum.
    """

    def __init__(
        self,
        num_classes: int,
        box_coder: BoxCoder,
        matcher: Matcher,
        focal_alpha: float,
        focal_gamma: float,
        smooth_l1_beta: float,
        box_reg_loss_type: str = "smooth_l1",
        normalizer_init: float = 100.0,
        normalizer_momentum: float = 0.9,
    ) -> None:
        if box_reg_loss_type not in BOX_REG_LOSS_TYPES:
            raise ValueError(
                f"MODEL.RETINANET.BBOX_REG_LOSS_TYPE {box_reg_loss_type!r} is not supported; "
                f"choose one of {list(BOX_REG_LOSS_TYPES)}"
            )
        self.num_classes = num_classes
        self.box_coder = box_coder
        self.matcher = matcher
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.smooth_l1_beta = smooth_l1_beta
        self.box_reg_loss_type = box_reg_loss_type
        self.normalizer_init = normalizer_init
        self.normalizer_momentum = normalizer_momentum
        self.loss_normalizer: float | None = None  # None until the first batch

    def state_dict(self) -> dict[str, float]:
        """The moving-average normaliser, so that a resumed run continues it."""
        return {} if self.loss_normalizer is None else {"loss_normalizer": self.loss_normalizer}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore what :meth:`state_dict` returned."""
        value = state.get("loss_normalizer")
        self.loss_normalizer = None if value is None else float(value)

    def _update_normalizer(self, num_pos: int) -> float:
        old = self.normalizer_init if self.loss_normalizer is None else self.loss_normalizer
        self.loss_normalizer = old * self.normalizer_momentum + max(num_pos, 1) * (
            1 - self.normalizer_momentum
        )
        return self.loss_normalizer

    @torch.no_grad()
    def label_anchors(self, anchors: Tensor, gt_boxes: Tensor, gt_classes: Tensor) -> tuple[Tensor, Tensor]:
        """Labels of one image's anchors.

        Args:
            anchors: Tensor[R, 4].
            gt_boxes: Tensor[K, 4].
            gt_classes: Tensor[K] class indices in [0, num_classes).

        Returns:
            labels: Tensor[R] int64: the class for positives, ``num_classes`` for background,
                -1 for ignored anchors.
            matched_boxes: Tensor[R, 4]: each anchor's matched box (zeros when K == 0).
        """
        match_quality = pairwise_iou(gt_boxes.to(anchors.dtype), anchors)  # [K, R]
        matched_idxs, anchor_labels = self.matcher(match_quality)
        if gt_boxes.shape[0] == 0:
            return torch.zeros_like(matched_idxs) + self.num_classes, torch.zeros_like(anchors)
        labels = gt_classes.to(torch.int64)[matched_idxs]
        labels[anchor_labels == 0] = self.num_classes
        labels[anchor_labels == -1] = -1
        return labels, gt_boxes.to(anchors.dtype)[matched_idxs]

    def __call__(
        self,
        outputs: dict[str, Tensor],
        anchors_per_level: Sequence[Tensor],
        gt_boxes: Sequence[Tensor],
        gt_classes: Sequence[Tensor],
    ) -> dict[str, Tensor]:
        """Compute the losses of a batch (and update the normaliser).

        Args:
            outputs: the head's ``logits`` Tensor[N, R, C] and ``deltas`` Tensor[N, R, 4].
            anchors_per_level: Tensor[R_l, 4] per level, sum_l R_l = R.
            gt_boxes: per image, Tensor[K_i, 4] boxes (x0, y0, x1, y1) in input pixels.
            gt_classes: per image, Tensor[K_i] class indices in [0, C).

        Returns:
            ``loss_cls`` and ``loss_box_reg``, scalar tensors.
        """
        anchors = torch.cat(list(anchors_per_level))
        labels_per_image, matched_per_image = [], []
        for boxes, classes in zip(gt_boxes, gt_classes, strict=True):
            labels, matched = self.label_anchors(anchors, boxes, classes)
            labels_per_image.append(labels)
            matched_per_image.append(matched)
        gt_labels = torch.stack(labels_per_image)  # [N, R]

        valid_mask = gt_labels >= 0
        pos_mask = valid_mask & (gt_labels != self.num_classes)
        normalizer = self._update_normalizer(int(pos_mask.sum().item()))

        logits = outputs["logits"]
        # One-hot without the background column: background anchors have all-zero targets.
        targets = F.one_hot(gt_labels[valid_mask], num_classes=self.num_classes + 1)[:, :-1]
        loss_cls = sigmoid_focal_loss(
            logits[valid_mask], targets.to(logits.dtype), self.focal_alpha, self.focal_gamma
        ).sum()

        deltas = outputs["deltas"]
        if self.box_reg_loss_type == "smooth_l1":
            gt_deltas = torch.stack([self.box_coder.get_deltas(anchors, m) for m in matched_per_image])
            loss_box_reg = smooth_l1_loss(deltas[pos_mask], gt_deltas[pos_mask], self.smooth_l1_beta).sum()
        else:
            pred_boxes = torch.stack([self.box_coder.apply_deltas(d, anchors) for d in deltas])
            loss_box_reg = giou_loss(pred_boxes[pos_mask], torch.stack(matched_per_image)[pos_mask]).sum()
        return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box_reg / normalizer}
