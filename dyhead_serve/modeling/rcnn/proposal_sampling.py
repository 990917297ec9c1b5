"""Training proposals of the ROI heads, as Detectron2's ``ROIHeads.label_and_sample_proposals``:
ground-truth boxes appended to the RPN's proposals, each proposal labelled by its best IoU, a
random minibatch per image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from dyhead_serve.modeling.box_iou import pairwise_iou
from dyhead_serve.modeling.matcher import Matcher
from dyhead_serve.modeling.rcnn.sampling import subsample_labels

__all__ = ["ProposalSampler", "SampledProposals"]


@dataclass
class SampledProposals:
    """One image's training minibatch of proposals, positives first.

    Attributes:
        boxes: Tensor[S, 4] proposal boxes (x0, y0, x1, y1) in input pixels.
        gt_classes: Tensor[S] int64, the matched box's class, or ``num_classes`` (background).
        gt_boxes: Tensor[S, 4] the matched ground-truth box (meaningful for foreground only; the
            proposal itself when the image has no ground truth).
    """

    boxes: Tensor
    gt_classes: Tensor
    gt_boxes: Tensor


class ProposalSampler:
    """Label and sample each image's proposals for the box head.

    Args:
        matcher: ``ROI_HEADS.IOU_THRESHOLDS`` / ``IOU_LABELS``, without low-quality matches.
        num_classes: ``ROI_HEADS.NUM_CLASSES``; also the background label.
        batch_size_per_image: ``ROI_HEADS.BATCH_SIZE_PER_IMAGE``.
        positive_fraction: ``ROI_HEADS.POSITIVE_FRACTION``.
        append_gt: ``ROI_HEADS.PROPOSAL_APPEND_GT``: the ground-truth boxes join the candidates
            (after the proposals), so that the box head sees positives from the first iteration.
    """

    def __init__(
        self,
        matcher: Matcher,
        num_classes: int,
        batch_size_per_image: int,
        positive_fraction: float,
        append_gt: bool = True,
    ) -> None:
        if batch_size_per_image <= 0:
            raise ValueError(
                f"MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE must be positive, got {batch_size_per_image}"
            )
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"MODEL.ROI_HEADS.POSITIVE_FRACTION must be in [0, 1], got {positive_fraction}")
        self.matcher = matcher
        self.num_classes = num_classes
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.append_gt = append_gt

    @torch.no_grad()
    def __call__(
        self, proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor], gt_classes: Sequence[Tensor]
    ) -> list[SampledProposals]:
        """Sample every image (draws from torch's global generator, image by image).

        Args:
            proposals: per image Tensor[P_i, 4] (x0, y0, x1, y1) in input pixels.
            gt_boxes: per image Tensor[K_i, 4].
            gt_classes: per image Tensor[K_i] int64 in [0, num_classes).

        Returns:
            One :class:`SampledProposals` per image, at most ``batch_size_per_image`` rows each.
        """
        if not len(proposals) == len(gt_boxes) == len(gt_classes):
            raise ValueError(
                f"got proposals for {len(proposals)} images and ground truth for "
                f"{len(gt_boxes)} / {len(gt_classes)}"
            )
        return [self._sample_image(p, b, c) for p, b, c in zip(proposals, gt_boxes, gt_classes, strict=True)]

    def _sample_image(self, proposals: Tensor, gt_boxes: Tensor, gt_classes: Tensor) -> SampledProposals:
        if self.append_gt:
            proposals = torch.cat([proposals, gt_boxes.to(proposals.dtype)])
        match_quality = pairwise_iou(gt_boxes, proposals)  # [K, P]
        matched_idxs, match_labels = self.matcher(match_quality)
        has_gt = gt_boxes.shape[0] > 0
        if has_gt:
            classes = gt_classes.to(torch.int64)[matched_idxs]
            classes[match_labels == 0] = self.num_classes
            classes[match_labels == -1] = -1
        else:
            classes = torch.full_like(matched_idxs, self.num_classes)
        positive, negative = subsample_labels(
            classes, self.batch_size_per_image, self.positive_fraction, self.num_classes
        )
        sampled = torch.cat([positive, negative])
        boxes = proposals[sampled]
        return SampledProposals(
            boxes=boxes,
            gt_classes=classes[sampled],
            gt_boxes=gt_boxes[matched_idxs[sampled]] if has_gt else boxes,
        )
