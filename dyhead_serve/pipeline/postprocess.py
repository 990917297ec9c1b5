"""Detections as the pipeline hands them out: a decoder's detections (already in original-image
pixels, see :class:`~dyhead_serve.decode.base.Decoder`) with their class names and image size."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from dyhead_serve.decode.base import DecodedDetections

__all__ = ["Detections", "label_detections"]


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


def label_detections(
    decoded: DecodedDetections, original_size: tuple[int, int], class_names: Sequence[str]
) -> Detections:
    """Attach class names (the index itself for a class without a name) and the image size.

    Args:
        decoded: a decoder's detections of one image.
        original_size: (h, w) of the original image.
        class_names: name of each class index.
    """
    labels = [class_names[c] if 0 <= c < len(class_names) else str(c) for c in decoded.classes.tolist()]
    height, width = original_size
    return Detections(decoded.boxes, decoded.scores, decoded.classes, labels, width=width, height=height)
