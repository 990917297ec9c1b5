"""Smooth L1 and the two GIoU losses against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from dyhead_serve.modeling.losses import atss_giou_loss, giou_loss, smooth_l1_loss


def test_smooth_l1_quadratic_linear_and_l1():
    prediction = torch.tensor([0.0, 0.05, -0.3, 2.0])
    target = torch.zeros(4)
    torch.testing.assert_close(
        smooth_l1_loss(prediction, target, beta=0.1),
        torch.tensor([0.0, 0.5 * 0.05**2 / 0.1, 0.3 - 0.05, 2.0 - 0.05]),
    )
    torch.testing.assert_close(smooth_l1_loss(prediction, target, beta=0.0), prediction.abs())


def test_giou_identical_overlapping_and_disjoint():
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert giou_loss(box, box).item() == pytest.approx(0.0, abs=1e-6)
    # Half overlap: IoU = 50 / 150; the enclosing box is the union, so GIoU = IoU.
    shifted = torch.tensor([[5.0, 0.0, 15.0, 10.0]])
    assert giou_loss(box, shifted).item() == pytest.approx(1 - 50 / 150, rel=1e-6)
    # Disjoint: IoU 0, enclosing 30 x 10 = 300, union 200: GIoU = -100 / 300.
    far = torch.tensor([[20.0, 0.0, 30.0, 10.0]])
    assert giou_loss(box, far).item() == pytest.approx(1 + 100 / 300, rel=1e-6)
    with pytest.raises(ValueError, match="x1 < x0"):
        giou_loss(torch.tensor([[10.0, 0.0, 0.0, 10.0]]), box)


def test_atss_giou_weights_and_reorders_inverted_predictions():
    target = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    pred = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 0.0, 30.0, 10.0]])
    per_box = torch.tensor([1 - 50 / 150, 1 + 100 / 300])
    weight = torch.tensor([0.5, 2.0])
    assert atss_giou_loss(pred, target, weight).item() == pytest.approx(
        (per_box * weight).sum().item(), rel=1e-5
    )
    assert atss_giou_loss(pred, target, torch.zeros(2)).item() == pytest.approx(
        per_box.sum().item(), rel=1e-5
    )
    # x1 < x0: the official code sets x1 = max(x0, x1), an empty box of width 0 at x = 5.
    inverted = torch.tensor([[5.0, 0.0, 0.0, 10.0]])
    # IoU 0; enclosing 10 x 10 = 100, union 100: GIoU 0, loss 1.
    assert atss_giou_loss(inverted, target[:1]).item() == pytest.approx(1.0, rel=1e-5)
