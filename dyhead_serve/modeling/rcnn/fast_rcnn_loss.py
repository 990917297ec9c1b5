"""Detectron2's box-head training losses (``FastRCNNOutputLayers.losses``): classification over
the classes and background, class-specific box regression of the foreground proposals."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dyhead_serve.decode.box_coding import BoxCoder
from dyhead_serve.modeling.rcnn.box_loss import box_regression_loss, check_box_reg_loss_type

__all__ = ["FastRCNNLoss"]


class FastRCNNLoss:
    """``loss_cls`` and ``loss_box_reg`` over the sampled proposals of a batch.

    ``loss_cls`` is the mean softmax cross-entropy over all sampled proposals (or, with
    ``sigmoid_ce``, the per-class binary cross-entropy summed over the foreground classes and
    divided by the number of proposals). ``loss_box_reg`` is the summed regression loss of the
    foreground proposals, on the deltas predicted for their ground-truth class, divided by the
    number of *all* sampled proposals (Detectron2's choice: every foreground example weighs the
    same whatever the minibatch's foreground share), times ``box_reg_loss_weight``.

    Args:
        box_coder: ``ROI_BOX_HEAD.BBOX_REG_WEIGHTS``.
        num_classes: ``ROI_HEADS.NUM_CLASSES``; class ``num_classes`` is background.
        smooth_l1_beta: ``ROI_BOX_HEAD.SMOOTH_L1_BETA`` (0: L1).
        box_reg_loss_type: ``ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE``, ``"smooth_l1"`` or ``"giou"``.
        box_reg_loss_weight: ``ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT``.
        sigmoid_ce: ``ROI_BOX_HEAD.USE_SIGMOID_CE``.
    """

    def __init__(
        self,
        box_coder: BoxCoder,
        num_classes: int,
        smooth_l1_beta: float = 0.0,
        box_reg_loss_type: str = "smooth_l1",
        box_reg_loss_weight: float = 1.0,
        sigmoid_ce: bool = False,
    ) -> None:
        check_box_reg_loss_type(box_reg_loss_type, "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE")
        self.box_coder = box_coder
        self.num_classes = num_classes
        self.smooth_l1_beta = smooth_l1_beta
        self.box_reg_loss_type = box_reg_loss_type
        self.box_reg_loss_weight = box_reg_loss_weight
        self.sigmoid_ce = sigmoid_ce

    def __call__(
        self, logits: Tensor, deltas: Tensor, proposal_boxes: Tensor, gt_classes: Tensor, gt_boxes: Tensor
    ) -> dict[str, Tensor]:
        """Losses of the sampled proposals of all images, concatenated.

        Args:
            logits: Tensor[S, K + 1] class logits, background last.
            deltas: Tensor[S, 4K] per-class deltas (Tensor[S, 4] when class agnostic).
            proposal_boxes: Tensor[S, 4] the proposals the deltas refer to.
            gt_classes: Tensor[S] int64 in [0, K] (K: background).
            gt_boxes: Tensor[S, 4] matched ground-truth boxes (read for foreground rows only).

        Returns:
            ``loss_cls`` and ``loss_box_reg``, scalar tensors.
        """
        num_samples = gt_classes.numel()
        if self.sigmoid_ce:
            loss_cls = self._sigmoid_cross_entropy(logits, gt_classes)
        elif num_samples == 0:
            loss_cls = logits.sum() * 0.0
        else:
            loss_cls = F.cross_entropy(logits, gt_classes, reduction="mean")

        foreground = torch.nonzero((gt_classes >= 0) & (gt_classes < self.num_classes)).squeeze(1)
        if deltas.shape[1] == 4:  # class agnostic
            fg_deltas = deltas[foreground]
        else:
            fg_deltas = deltas.view(-1, self.num_classes, 4)[foreground, gt_classes[foreground]]
        loss_box_reg = box_regression_loss(
            fg_deltas,
            proposal_boxes[foreground],
            gt_boxes[foreground],
            self.box_coder,
            self.box_reg_loss_type,
            self.smooth_l1_beta,
        )
        return {
            "loss_cls": loss_cls,
            "loss_box_reg": loss_box_reg / max(num_samples, 1.0) * self.box_reg_loss_weight,
        }

    def _sigmoid_cross_entropy(self, logits: Tensor, gt_classes: Tensor) -> Tensor:
        if logits.numel() == 0:
            return logits.new_zeros(())
        targets = F.one_hot(gt_classes, num_classes=self.num_classes + 1)[:, :-1].to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits[:, :-1], targets, reduction="none")
        return loss.sum() / logits.shape[0]
