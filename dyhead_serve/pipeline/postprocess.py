"""Detections in original-image pixels: rescale, clip and drop empty boxes (Detectron2's
``detector_postprocess``), then attach class names. Detections a decoder already mapped back
(mmdetection's rules, which do so before NMS) are taken as they are."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dyhead_serve.decode.detectron2_dense import RawDetections

__all__ = ["Detections", "to_original_image"]


@dataclass
class Detections:
    """Detections of one image, in its original pixel coordinates, highest score first."""

    boxes: Tensor  # [K, 4] (x1, y1, x2, y2)
    scores: Tensor  # [K]
    classes: Tensor  # [K] int64
    labels: list[str]
    width: int
    height: int

    def __len__(self) -> int:
        return len(self.scores)

    def to_json(self) -> list[dict[str, Any]]:
        """``[{box: [x1, y1, x2, y2], score, class_id, label}, ...]``."""
        return [
            {"box": [float(v) for v in box], "score": float(score), "class_id": int(cls), "label": label}
            for box, score, cls, label in zip(
                self.boxes.tolist(), self.scores.tolist(), self.classes.tolist(), self.labels, strict=True
            )
        ]


def to_original_image(
    raw: RawDetections,
    image_size: tuple[int, int],
    original_size: tuple[int, int],
    class_names: Sequence[str],
    score_threshold: float | None = None,
) -> Detections:
    """Map detections from the resized network input back to the original image.

    Args:
        raw: detections in resized-image coordinates, or in original-image ones when
            ``raw.in_original_image`` (then neither rescaled nor clipped, as mmdetection leaves
            them).
        image_size: (h, w) of the resized image.
        original_size: (h, w) of the original image.
        class_names: name of each class index.
        score_threshold: drop detections scoring at or below it (after decoding).
    """
    out_h, out_w = original_size
    boxes = raw.boxes.clone()
    if raw.in_original_image:
        keep = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    else:
        boxes[:, 0::2] *= out_w / image_size[1]
        boxes[:, 1::2] *= out_h / image_size[0]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=out_w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=out_h)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if score_threshold is not None:
        keep &= raw.scores > score_threshold
    classes = raw.classes[keep]
    labels = [class_names[c] if 0 <= c < len(class_names) else str(c) for c in classes.tolist()]
    return Detections(boxes[keep], raw.scores[keep], classes, labels, width=out_w, height=out_h)
