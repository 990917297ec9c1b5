"""The box regression loss both Faster R-CNN stages train with (Detectron2's
``_dense_box_regression_loss`` on already selected rows)."""

from __future__ import annotations

from torch import Tensor

from dyhead_serve.decode.box_coding import BoxCoder
from dyhead_serve.modeling.losses.giou import giou_loss
from dyhead_serve.modeling.losses.smooth_l1 import smooth_l1_loss

__all__ = ["BOX_REG_LOSS_TYPES", "box_regression_loss", "check_box_reg_loss_type"]

BOX_REG_LOSS_TYPES = ("smooth_l1", "giou")


def check_box_reg_loss_type(loss_type: str, key: str) -> None:
    """Raise ``ValueError`` naming config ``key`` unless ``loss_type`` is supported."""
    if loss_type not in BOX_REG_LOSS_TYPES:
        raise ValueError(f"{key} {loss_type!r} is not supported; choose one of {list(BOX_REG_LOSS_TYPES)}")


def box_regression_loss(
    pred_deltas: Tensor,
    reference_boxes: Tensor,
    target_boxes: Tensor,
    box_coder: BoxCoder,
    loss_type: str = "smooth_l1",
    smooth_l1_beta: float = 0.0,
) -> Tensor:
    """Summed (not normalised) regression loss of the given rows.

    Args:
        pred_deltas: Tensor[R, 4] predicted deltas relative to ``reference_boxes``.
        reference_boxes: Tensor[R, 4] anchors or proposals (x0, y0, x1, y1).
        target_boxes: Tensor[R, 4] their matched ground-truth boxes.
        box_coder: the delta parameterisation (``BBOX_REG_WEIGHTS``).
        loss_type: ``"smooth_l1"`` on the deltas or ``"giou"`` on the decoded boxes.
        smooth_l1_beta: ``SMOOTH_L1_BETA`` (0: L1).

    Returns:
        A scalar tensor (0 when R == 0).
    """
    check_box_reg_loss_type(loss_type, "BBOX_REG_LOSS_TYPE")
    if loss_type == "smooth_l1":
        target_deltas = box_coder.get_deltas(reference_boxes, target_boxes)
        return smooth_l1_loss(pred_deltas, target_deltas, smooth_l1_beta).sum()
    pred_boxes = box_coder.apply_deltas(pred_deltas, reference_boxes)
    return giou_loss(pred_boxes, target_boxes).sum()
