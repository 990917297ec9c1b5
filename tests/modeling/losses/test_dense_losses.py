"""RetinaNet and ATSS loss modules on tiny hand-built batches, and DenseDetector.losses."""

from __future__ import annotations

import math

import pytest
import torch

from dyhead_serve.decode.anchors import AnchorGenerator
from dyhead_serve.decode.box_coding import BoxCoder
from dyhead_serve.modeling.losses import ATSSLoss, RetinaNetLoss
from dyhead_serve.modeling.matcher import Matcher

LN2 = math.log(2)


def _retinanet_loss(**kwargs) -> RetinaNetLoss:
    return RetinaNetLoss(
        num_classes=1,
        box_coder=BoxCoder((1.0, 1.0, 1.0, 1.0)),
        matcher=Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True),
        focal_alpha=0.25,
        focal_gamma=2.0,
        smooth_l1_beta=0.0,
        **kwargs,
    )


def test_retinanet_loss_values_and_moving_average_normaliser():
    loss_fn = _retinanet_loss()
    anchors = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])]
    gt_boxes, gt_classes = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])], [torch.tensor([0])]
    # anchor 0 is positive (IoU 1), anchor 1 background; logits 0 give p = 0.5.
    outputs = {
        "logits": torch.zeros(1, 2, 1),
        "deltas": torch.tensor([[[0.1, -0.2, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0]]]),
    }
    losses = loss_fn(outputs, anchors, gt_boxes, gt_classes)
    normaliser = 100 * 0.9 + 1 * 0.1
    assert losses["loss_cls"].item() == pytest.approx((0.25 + 0.75) * 0.25 * LN2 / normaliser, rel=1e-6)
    assert losses["loss_box_reg"].item() == pytest.approx(0.3 / normaliser, rel=1e-6)  # L1, positives only
    assert loss_fn.state_dict() == {"loss_normalizer": pytest.approx(normaliser)}
    losses = loss_fn(outputs, anchors, gt_boxes, gt_classes)
    assert loss_fn.loss_normalizer == pytest.approx(normaliser * 0.9 + 0.1)
    restored = _retinanet_loss()
    restored.load_state_dict(loss_fn.state_dict())
    assert restored.loss_normalizer == loss_fn.loss_normalizer


def test_retinanet_ignored_anchors_cost_nothing_and_giou_option():
    anchors = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 12.0], [50.0, 50.0, 60.0, 60.0]])]
    gt_boxes, gt_classes = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])], [torch.tensor([0])]
    # anchor 1 has IoU 100/120 = 0.83: positive too; make it IoU 0.45 (ignored) instead:
    anchors[0][1] = torch.tensor([0.0, 0.0, 10.0, 22.0])  # IoU 100/220 = 0.4545
    outputs = {"logits": torch.zeros(1, 3, 1), "deltas": torch.zeros(1, 3, 4)}
    losses = _retinanet_loss()(outputs, anchors, gt_boxes, gt_classes)
    assert losses["loss_cls"].item() == pytest.approx((0.25 + 0.75) * 0.25 * LN2 / 90.1, rel=1e-6)
    giou = _retinanet_loss(box_reg_loss_type="giou")(outputs, anchors, gt_boxes, gt_classes)
    assert giou["loss_box_reg"].item() == pytest.approx(0.0, abs=1e-6)  # anchor 0 decodes onto the box
    with pytest.raises(ValueError, match="BBOX_REG_LOSS_TYPE"):
        _retinanet_loss(box_reg_loss_type="diou")


def test_atss_loss_on_a_perfect_box_prediction():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    loss_fn = ATSSLoss(
        coder, topk=4, num_anchors_per_location=1, focal_alpha=0.25, focal_gamma=2.0, reg_loss_weight=2.0
    )
    anchors = AnchorGenerator([8], [[16.0]], [[1.0]], offset=0.5).grid_anchors([(4, 4)])
    box = torch.tensor([[6.0, 6.0, 22.0, 22.0]])  # one positive: anchor 5 (see test_atss_assign)
    deltas = torch.zeros(1, 16, 4)
    deltas[0, 5] = coder.get_deltas(anchors[0][5:6], box)[0]
    outputs = {"logits": torch.zeros(1, 16, 2), "deltas": deltas, "centerness": torch.zeros(1, 16)}
    losses = loss_fn(outputs, anchors, [box], [torch.tensor([1])])
    # 1 positive (class 1): 1 positive term and 31 negative terms at p = 0.5, divided by 1.
    assert losses["loss_cls"].item() == pytest.approx((0.25 + 31 * 0.75) * 0.25 * LN2, rel=1e-6)
    assert losses["loss_box_reg"].item() == pytest.approx(0.0, abs=1e-5)
    # anchor centre (12, 12) in [6, 22]: l = t = 6, r = b = 10: centerness 6/10; BCE at logit 0.
    c = 0.6
    assert losses["loss_ctr"].item() == pytest.approx(LN2, rel=1e-6)  # BCE(0, c) = ln 2 for any c
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_ctr"}
    outputs["centerness"][0, 5] = math.log(c / (1 - c))  # predicted = target
    best = loss_fn(outputs, anchors, [box], [torch.tensor([1])])["loss_ctr"].item()
    assert best == pytest.approx(-(c * math.log(c) + (1 - c) * math.log(1 - c)), rel=1e-5)


def test_atss_loss_without_positives_is_zero_but_differentiable():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    loss_fn = ATSSLoss(
        coder, topk=9, num_anchors_per_location=1, focal_alpha=0.25, focal_gamma=2.0, reg_loss_weight=2.0
    )
    anchors = AnchorGenerator([8], [[16.0]], [[1.0]], offset=0.5).grid_anchors([(4, 4)])
    deltas = torch.zeros(1, 16, 4, requires_grad=True)
    outputs = {"logits": torch.zeros(1, 16, 2), "deltas": deltas, "centerness": torch.zeros(1, 16)}
    losses = loss_fn(outputs, anchors, [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.int64)])
    assert losses["loss_box_reg"].item() == 0.0 and losses["loss_ctr"].item() == 0.0
    assert losses["loss_cls"].item() == pytest.approx(32 * 0.75 * 0.25 * LN2, rel=1e-6)  # / max(0, 1)
    losses["loss_box_reg"].backward()
    assert deltas.grad is not None
