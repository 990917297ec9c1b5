"""Drawing detections: the score floor and the order (highest score on top)."""

from __future__ import annotations

import numpy as np
import torch

from dyhead_serve.pipeline.draw import class_color, draw_detections
from dyhead_serve.pipeline.postprocess import Detections


def _detections() -> Detections:
    # Two boxes sharing their left edge at x=10, highest score first as the predictor returns them.
    return Detections(
        boxes=torch.tensor([[10.0, 40.0, 60.0, 80.0], [10.0, 20.0, 50.0, 90.0]]),
        scores=torch.tensor([0.9, 0.2]),
        classes=torch.tensor([1, 4]),
        labels=["square", "ring"],
        width=100,
        height=100,
    )


def test_min_score_leaves_lower_detections_undrawn() -> None:
    image = np.full((100, 100, 3), 128, dtype=np.uint8)
    nothing = np.asarray(draw_detections(image, _detections(), min_score=0.95))
    only_high = np.asarray(draw_detections(image, _detections(), min_score=0.5))
    both = np.asarray(draw_detections(image, _detections()))
    assert np.array_equal(nothing, image)
    assert tuple(only_high[85, 10]) == (128, 128, 128)  # the low box's edge below the high box
    assert tuple(both[85, 10]) == class_color(4)


def test_the_highest_score_is_drawn_last() -> None:
    image = np.full((100, 100, 3), 128, dtype=np.uint8)
    drawn = np.asarray(draw_detections(image, _detections()))
    assert tuple(drawn[60, 10]) == class_color(1)  # the shared edge has the 0.9 box's colour
