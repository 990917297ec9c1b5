"""The interface of the training losses a :class:`~dyhead_serve.modeling.detector.DenseDetector`
holds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import Tensor

__all__ = ["DenseLoss"]


class DenseLoss(Protocol):
    """Turns a dense head's outputs and the ground truth into named scalar losses.

    ``__call__(outputs, anchors_per_level, gt_boxes, gt_classes)``: ``outputs`` as the head
    returns them (Tensor[N, R, ...] each), anchors Tensor[R_l, 4] per level, per image the boxes
    Tensor[K_i, 4] (x0, y0, x1, y1, input pixels) and class indices Tensor[K_i]. Returns
    Detectron2's loss names (``loss_cls``, ``loss_box_reg``, ...) mapped to scalar tensors.

    ``state_dict`` / ``load_state_dict`` carry what the loss keeps between iterations (e.g. a
    moving-average normaliser) through a training checkpoint.
    """

    def __call__(
        self,
        outputs: dict[str, Tensor],
        anchors_per_level: Sequence[Tensor],
        gt_boxes: Sequence[Tensor],
        gt_classes: Sequence[Tensor],
    ) -> dict[str, Tensor]: ...

    def state_dict(self) -> dict[str, float]: ...

    def load_state_dict(self, state: dict[str, float]) -> None: ...
