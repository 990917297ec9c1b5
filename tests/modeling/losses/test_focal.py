"""Sigmoid focal loss in Detectron2's and in the official ATSS form, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from dyhead_serve.modeling.losses import sigmoid_focal_loss, sigmoid_focal_loss_from_labels

ALPHA, GAMMA = 0.25, 2.0


def _by_hand(logit: float, positive: bool) -> float:
    p = 1 / (1 + math.exp(-logit))
    if positive:
        return -ALPHA * (1 - p) ** GAMMA * math.log(p)
    return -(1 - ALPHA) * p**GAMMA * math.log(1 - p)


def test_binary_targets_match_hand_computed_values():
    logits = torch.tensor([0.0, 0.0, 2.0, -1.5])
    targets = torch.tensor([1.0, 0.0, 0.0, 1.0])
    expected = torch.tensor(
        [_by_hand(0.0, True), _by_hand(0.0, False), _by_hand(2.0, False), _by_hand(-1.5, True)]
    )
    # At logit 0: p = 0.5, so 0.25 * 0.25 * ln 2 for a positive and 0.75 * 0.25 * ln 2 for a negative.
    assert expected[0].item() == pytest.approx(0.25 * 0.25 * math.log(2))
    assert expected[1].item() == pytest.approx(0.75 * 0.25 * math.log(2))
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, ALPHA, GAMMA), expected)


def test_negative_alpha_disables_weighting():
    loss = sigmoid_focal_loss(torch.tensor([0.0]), torch.tensor([1.0]), alpha=-1, gamma=GAMMA)
    assert loss.item() == pytest.approx(0.25 * math.log(2))


def test_labels_form_one_hot_layout_and_ignore():
    logits = torch.tensor([[0.0, 2.0, -1.5], [0.5, 0.5, 0.5], [3.0, 3.0, 3.0]])
    labels = torch.tensor([3, 0, -1])  # class 2 (labels are class + 1), background, ignored
    loss = sigmoid_focal_loss_from_labels(logits, labels, ALPHA, GAMMA)
    expected = torch.tensor(
        [
            [_by_hand(0.0, False), _by_hand(2.0, False), _by_hand(-1.5, True)],
            [_by_hand(0.5, False)] * 3,
            [0.0, 0.0, 0.0],
        ]
    )
    torch.testing.assert_close(loss, expected)
    one_hot = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(loss[:2], sigmoid_focal_loss(logits[:2], one_hot, ALPHA, GAMMA))


def test_labels_form_saturates_like_the_cuda_kernel():
    # log(max(p, FLT_MIN)): a positive with logit -100 costs alpha * log(1 / FLT_MIN), not alpha * 100.
    loss = sigmoid_focal_loss_from_labels(torch.tensor([[-100.0]]), torch.tensor([1]), ALPHA, GAMMA)
    assert loss.item() == pytest.approx(-ALPHA * math.log(torch.finfo(torch.float32).tiny), rel=1e-6)
    assert sigmoid_focal_loss(torch.tensor([-100.0]), torch.tensor([1.0]), ALPHA, GAMMA).item() == (
        pytest.approx(ALPHA * 100.0, rel=1e-6)
    )


def test_labels_form_checks_shapes():
    with pytest.raises(ValueError, match="labels"):
        sigmoid_focal_loss_from_labels(torch.zeros(4, 3), torch.zeros(3, dtype=torch.int64), ALPHA, GAMMA)
