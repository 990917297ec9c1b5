"""Detectron2's Matcher: IoU thresholds, ignore band and low-quality matches."""

from __future__ import annotations

import pytest
import torch

from dyhead_serve.modeling.matcher import Matcher


def test_thresholds_and_boundaries():
    matcher = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=False)
    # best IoU per anchor: 0.39 (neg), 0.4 (ignore, >= low), 0.5 (pos, >= 0.5), 0.45 from box 1.
    iou = torch.tensor([[0.39, 0.4, 0.5, 0.1], [0.0, 0.1, 0.2, 0.45]])
    matches, labels = matcher(iou)
    assert matches.tolist() == [0, 0, 0, 1]
    assert labels.tolist() == [0, -1, 1, -1]
    assert labels.dtype == torch.int8


def test_low_quality_matches_make_each_box_best_anchor_positive_ties_included():
    iou = torch.tensor([[0.3, 0.45, 0.2, 0.45], [0.1, 0.2, 0.35, 0.0]])
    strict = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=False)
    assert strict(iou)[1].tolist() == [0, -1, 0, -1]
    matches, labels = Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True)(iou)
    # box 0's best IoU 0.45 is at anchors 1 and 3 (a tie), box 1's 0.35 at anchor 2.
    assert labels.tolist() == [0, 1, 1, 1]
    assert matches.tolist() == [0, 0, 1, 0]


def test_no_ground_truth():
    matches, labels = Matcher([0.4, 0.5], [0, -1, 1], True)(torch.zeros(0, 5))
    assert matches.tolist() == [0] * 5 and labels.tolist() == [0] * 5


def test_invalid_configuration_is_refused():
    with pytest.raises(ValueError, match="one more"):
        Matcher([0.4, 0.5], [0, 1])
    with pytest.raises(ValueError, match="non-decreasing"):
        Matcher([0.5, 0.4], [0, -1, 1])
    with pytest.raises(ValueError, match="-1, 0 or 1"):
        Matcher([0.5], [0, 2])
