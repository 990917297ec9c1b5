"""ATSS anchor assignment on hand-built cases.

One level, stride 8, 16 x 16 anchors centred at 4, 12, 20, 28 on a 32 x 32 input; anchor
index = 4 * row + column.
"""

from __future__ import annotations

import torch

from dyhead_serve.decode.anchors import AnchorGenerator
from dyhead_serve.modeling.losses import atss_assign


def _anchors() -> list[torch.Tensor]:
    return AnchorGenerator([8], [[16.0]], [[1.0]], offset=0.5).grid_anchors([(4, 4)])


def _index(cx: float, cy: float) -> int:
    return 4 * int(cy // 8) + int(cx // 8)


def test_mean_plus_std_threshold_selects_the_best_candidate():
    # Box centre (14, 14): the 4 nearest anchors are centred at (12, 12), (20, 12), (12, 20),
    # (20, 20), with IoUs 196/316 = 0.620, 140/372 = 0.376, 0.376, 100/412 = 0.243.
    # mean 0.404 + std 0.157 = 0.561: only the anchor at (12, 12) passes.
    labels, matched = atss_assign(
        _anchors(),
        torch.tensor([[6.0, 6.0, 22.0, 22.0]]),
        torch.tensor([4]),
        topk=4,
        num_anchors_per_location=1,
    )
    expected = torch.zeros(16, dtype=torch.int64)
    expected[_index(12, 12)] = 5  # class 4 -> label 5
    assert torch.equal(labels, expected)
    torch.testing.assert_close(matched[_index(12, 12)], torch.tensor([6.0, 6.0, 22.0, 22.0]))


def test_candidate_centre_must_lie_inside_the_box():
    # x from 5 to 11.99 contains no anchor centre (4 and 12): nothing is positive. Widened to
    # x0 = 3, the column at x = 4 lies inside and the best candidate becomes positive.
    narrow = torch.tensor([[5.0, 5.0, 11.99, 30.0]])
    labels, _ = atss_assign(_anchors(), narrow, torch.tensor([0]), topk=4, num_anchors_per_location=1)
    assert labels.sum() == 0
    wide = torch.tensor([[3.0, 5.0, 11.99, 30.0]])
    labels, _ = atss_assign(_anchors(), wide, torch.tensor([0]), topk=4, num_anchors_per_location=1)
    assert labels.sum() > 0
    positives = torch.nonzero(labels).flatten().tolist()
    assert all(p % 4 == 0 for p in positives)  # all in the column centred at x = 4


def test_anchor_claimed_by_two_boxes_goes_to_the_higher_iou():
    # Box A equals the anchor at (12, 12) (IoU 1; its threshold 0.5 + 0.333 keeps only that
    # anchor). Box B is the first test's box, for which the same anchor (IoU 0.620) is positive.
    boxes = torch.tensor([[4.0, 4.0, 20.0, 20.0], [6.0, 6.0, 22.0, 22.0]])
    labels, matched = atss_assign(_anchors(), boxes, torch.tensor([1, 2]), topk=4, num_anchors_per_location=1)
    expected = torch.zeros(16, dtype=torch.int64)
    expected[_index(12, 12)] = 2  # box A, class 1
    assert torch.equal(labels, expected)
    torch.testing.assert_close(matched[_index(12, 12)], boxes[0])


def test_candidates_per_level_scale_with_anchors_per_location():
    # Two anchors (16 and 24 px) per location. Box [5, 6, 21, 22], centre (13, 14): the nearest
    # positions are (12, 12) then (12, 20). topk=2 with 2 anchors per location takes 4
    # candidates, IoUs 0.695, 0.444 (24 px at (12, 12)), 0.414, 0.368: mean 0.481 + std 0.147
    # = 0.627 keeps the 16 px anchor at (12, 12). Taking only 2 candidates (0.695, 0.444)
    # would set the threshold at 0.747 and keep nothing.
    anchors = AnchorGenerator([8], [[16.0, 24.0]], [[1.0]], offset=0.5).grid_anchors([(4, 4)])
    box = torch.tensor([[5.0, 6.0, 21.0, 22.0]])
    labels, _ = atss_assign(anchors, box, torch.tensor([0]), topk=2, num_anchors_per_location=2)
    expected = torch.zeros(32, dtype=torch.int64)
    expected[2 * _index(12, 12)] = 1  # location 5, first (16 px) anchor
    assert torch.equal(labels, expected)


def test_no_ground_truth_means_all_background():
    labels, matched = atss_assign(
        _anchors(), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), topk=9, num_anchors_per_location=1
    )
    assert labels.shape == (16,) and labels.sum() == 0 and matched.shape == (16, 4)
