"""Detectron2's RPN training losses: anchors labelled by IoU, a random minibatch of them per
image, objectness binary cross-entropy and box regression over that minibatch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dyhead_serve.decode.box_coding import BoxCoder
from dyhead_serve.modeling.box_iou import pairwise_iou
from dyhead_serve.modeling.matcher import Matcher
from dyhead_serve.modeling.rcnn.box_loss import box_regression_loss, check_box_reg_loss_type
from dyhead_serve.modeling.rcnn.sampling import subsample_labels

__all__ = ["RPNLoss"]


class RPNLoss:
    """``loss_rpn_cls`` and ``loss_rpn_loc`` of Detectron2's ``RPN``.

    Each image's anchors are labelled by :class:`Matcher` (``RPN.IOU_THRESHOLDS``, with
    low-quality matches), then :func:`subsample_labels` keeps ``batch_size_per_image`` of them
    (at most ``positive_fraction`` positive); the rest are ignored. ``loss_rpn_cls`` is the
    summed binary cross-entropy of the kept anchors' objectness, ``loss_rpn_loc`` the summed
    box regression loss of the kept positives; both are divided by
    ``batch_size_per_image * num_images`` (not by the number actually sampled) and weighted.

    Args:
        box_coder: ``RPN.BBOX_REG_WEIGHTS``.
        matcher: anchor labelling (``RPN.IOU_THRESHOLDS``, ``RPN.IOU_LABELS``).
        batch_size_per_image: ``RPN.BATCH_SIZE_PER_IMAGE``.
        positive_fraction: ``RPN.POSITIVE_FRACTION``.
        smooth_l1_beta: ``RPN.SMOOTH_L1_BETA`` (0: L1).
        box_reg_loss_type: ``RPN.BBOX_REG_LOSS_TYPE``, ``"smooth_l1"`` or ``"giou"``.
        cls_weight: ``RPN.LOSS_WEIGHT``.
        loc_weight: ``RPN.BBOX_REG_LOSS_WEIGHT * RPN.LOSS_WEIGHT``.
        boundary_threshold: ``RPN.BOUNDARY_THRESH``; when >= 0, anchors reaching more than this
            many pixels outside the image are ignored (a legacy option, off by default).
    """

    def __init__(
        self,
        box_coder: BoxCoder,
        matcher: Matcher,
        batch_size_per_image: int,
        positive_fraction: float,
        smooth_l1_beta: float = 0.0,
        box_reg_loss_type: str = "smooth_l1",
        cls_weight: float = 1.0,
        loc_weight: float = 1.0,
        boundary_threshold: float = -1.0,
    ) -> None:
        check_box_reg_loss_type(box_reg_loss_type, "MODEL.RPN.BBOX_REG_LOSS_TYPE")
        if batch_size_per_image <= 0:
            raise ValueError(f"MODEL.RPN.BATCH_SIZE_PER_IMAGE must be positive, got {batch_size_per_image}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"MODEL.RPN.POSITIVE_FRACTION must be in [0, 1], got {positive_fraction}")
        self.box_coder = box_coder
        self.matcher = matcher
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.smooth_l1_beta = smooth_l1_beta
        self.box_reg_loss_type = box_reg_loss_type
        self.cls_weight = cls_weight
        self.loc_weight = loc_weight
        self.boundary_threshold = boundary_threshold

    @torch.no_grad()
    def label_and_sample_anchors(
        self, anchors: Tensor, gt_boxes: Sequence[Tensor], image_sizes: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Training labels of every anchor of every image.

        Args:
            anchors: Tensor[R, 4], all levels concatenated.
            gt_boxes: per image Tensor[K_i, 4] (x0, y0, x1, y1) in input pixels.
            image_sizes: Tensor[N, 2] (h, w) before padding (used with ``boundary_threshold``).

        Returns:
            labels: Tensor[N, R] int8: 1 sampled positive, 0 sampled negative, -1 not sampled.
            matched_boxes: Tensor[N, R, 4]: each anchor's matched box (meaningful where the label
                is 1; zeros for an image without boxes).
        """
        labels, matched_boxes = [], []
        for boxes, image_size in zip(gt_boxes, image_sizes.tolist(), strict=True):
            match_quality = pairwise_iou(boxes, anchors)  # [K, R]
            matched_idxs, anchor_labels = self.matcher(match_quality)
            if self.boundary_threshold >= 0:
                height, width = image_size
                t = self.boundary_threshold
                inside = (
                    (anchors[:, 0] >= -t)
                    & (anchors[:, 1] >= -t)
                    & (anchors[:, 2] < width + t)
                    & (anchors[:, 3] < height + t)
                )
                anchor_labels[~inside] = -1
            positive, negative = subsample_labels(
                anchor_labels, self.batch_size_per_image, self.positive_fraction, 0
            )
            sampled = torch.full_like(anchor_labels, -1)
            sampled[positive] = 1
            sampled[negative] = 0
            labels.append(sampled)
            matched_boxes.append(boxes[matched_idxs] if len(boxes) else torch.zeros_like(anchors))
        return torch.stack(labels), torch.stack(matched_boxes)

    def __call__(
        self,
        logits: Sequence[Tensor],
        deltas: Sequence[Tensor],
        anchors: Sequence[Tensor],
        gt_boxes: Sequence[Tensor],
        image_sizes: Tensor,
    ) -> dict[str, Tensor]:
        """Losses of a batch (draws the anchor minibatch from torch's global generator).

        Args:
            logits: per level Tensor[N, R_l] objectness logits, as the RPN head returns them.
            deltas: per level Tensor[N, R_l, 4] anchor deltas.
            anchors: per level Tensor[R_l, 4].
            gt_boxes: per image Tensor[K_i, 4] in input pixels.
            image_sizes: Tensor[N, 2] (h, w) before padding.

        Returns:
            ``loss_rpn_cls`` and ``loss_rpn_loc``, scalar tensors.
        """
        all_anchors = torch.cat(list(anchors))  # [R, 4]
        labels, matched_boxes = self.label_and_sample_anchors(all_anchors, gt_boxes, image_sizes)
        num_images = labels.shape[0]
        normalizer = self.batch_size_per_image * num_images

        positive = labels == 1  # [N, R]
        pred_deltas = torch.cat(list(deltas), dim=1)  # [N, R, 4]
        loss_loc = box_regression_loss(
            pred_deltas[positive],
            all_anchors.expand(num_images, -1, -1)[positive],
            matched_boxes[positive],
            self.box_coder,
            self.box_reg_loss_type,
            self.smooth_l1_beta,
        )
        valid = labels >= 0
        loss_cls = F.binary_cross_entropy_with_logits(
            torch.cat(list(logits), dim=1)[valid], labels[valid].to(torch.float32), reduction="sum"
        )
        return {
            "loss_rpn_cls": loss_cls / normalizer * self.cls_weight,
            "loss_rpn_loc": loss_loc / normalizer * self.loc_weight,
        }
