"""Box <-> delta transforms (R-CNN parameterisation): Detectron2's ``Box2BoxTransform`` and the decoding
of mmdetection's ``DeltaXYWHBBoxCoder``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["DEFAULT_SCALE_CLAMP", "BoxCoder", "decode_delta_xywh"]

DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Encodes target boxes relative to reference boxes and decodes predicted deltas.

    Args:
        weights: (wx, wy, ww, wh) scaling of the (dx, dy, dw, dh) deltas.
        scale_clamp: upper bound on dw and dh before ``exp``.
    """

    def __init__(self, weights: Sequence[float], scale_clamp: float = DEFAULT_SCALE_CLAMP) -> None:
        if len(weights) != 4:
            raise ValueError(f"box regression weights need 4 values, got {list(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def get_deltas(self, src_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        """Tensor[R, 4] boxes (x0, y0, x1, y1), Tensor[R, 4] targets -> Tensor[R, 4] deltas."""
        src_w = src_boxes[:, 2] - src_boxes[:, 0]
        src_h = src_boxes[:, 3] - src_boxes[:, 1]
        src_x = src_boxes[:, 0] + 0.5 * src_w
        src_y = src_boxes[:, 1] + 0.5 * src_h
        tgt_w = target_boxes[:, 2] - target_boxes[:, 0]
        tgt_h = target_boxes[:, 3] - target_boxes[:, 1]
        tgt_x = target_boxes[:, 0] + 0.5 * tgt_w
        tgt_y = target_boxes[:, 1] + 0.5 * tgt_h
        wx, wy, ww, wh = self.weights
        dx = wx * (tgt_x - src_x) / src_w
        dy = wy * (tgt_y - src_y) / src_h
        dw = ww * torch.log(tgt_w / src_w)
        dh = wh * torch.log(tgt_h / src_h)
        return torch.stack((dx, dy, dw, dh), dim=1)

    def apply_deltas(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """Tensor[R, 4k] deltas, Tensor[R, 4] boxes -> Tensor[R, 4k] decoded boxes."""
        deltas = deltas.float()
        boxes = boxes.to(deltas.dtype)
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights
        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = torch.clamp(deltas[:, 2::4] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[:, 3::4] / wh, max=self.scale_clamp)
        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = torch.exp(dw) * widths[:, None]
        pred_h = torch.exp(dh) * heights[:, None]
        x1 = pred_ctr_x - 0.5 * pred_w
        y1 = pred_ctr_y - 0.5 * pred_h
        x2 = pred_ctr_x + 0.5 * pred_w
        y2 = pred_ctr_y + 0.5 * pred_h
        return torch.stack((x1, y1, x2, y2), dim=-1).reshape(deltas.shape)


def decode_delta_xywh(
    deltas: Tensor,
    boxes: Tensor,
    means: Sequence[float],
    stds: Sequence[float],
    max_hw: tuple[int, int] | None,
    wh_ratio_clip: float = 16 / 1000,
) -> Tensor:
    """Decode deltas as mmdetection's ``DeltaXYWHBBoxCoder`` does (``delta2bbox``, clip_border).

    The arithmetic differs from :meth:`BoxCoder.apply_deltas` in ways that change float32
    results, and is reproduced step for step: deltas are de-normalised as ``d * std + mean``
    (not divided by weights), centres are ``(x0 + x1) * 0.5``, ``dw`` and ``dh`` are clamped to
    ``[-|log(wh_ratio_clip)|, |log(wh_ratio_clip)|]``, and the boxes are clipped to the image.

    Args:
        deltas: Tensor[R, 4] (dx, dy, dw, dh).
        boxes: Tensor[R, 4] reference boxes (x0, y0, x1, y1).
        means, stds: the coder's ``target_means`` and ``target_stds``.
        max_hw: (h, w) to clip the boxes to, or None for no clipping.
        wh_ratio_clip: the coder's ``wh_ratio_clip``.

    Returns:
        Tensor[R, 4] boxes (x0, y0, x1, y1).
    """
    if deltas.shape[0] == 0:
        return deltas
    denorm = deltas * deltas.new_tensor(list(stds)).view(1, -1) + deltas.new_tensor(list(means)).view(1, -1)
    dxy, dwh = denorm[:, :2], denorm[:, 2:]
    pxy = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    pwh = boxes[:, 2:] - boxes[:, :2]
    max_ratio = abs(math.log(wh_ratio_clip))
    dwh = dwh.clamp(min=-max_ratio, max=max_ratio)
    gxy = pxy + pwh * dxy
    gwh = pwh * dwh.exp()
    decoded = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
    if max_hw is not None:
        decoded[:, 0::2].clamp_(min=0, max=max_hw[1])
        decoded[:, 1::2].clamp_(min=0, max=max_hw[0])
    return decoded
