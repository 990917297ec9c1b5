"""Faster R-CNN training: minibatch sampling, RPN anchor labelling, ROI proposal labelling with the
ground truth appended, and the loss normalisations, on hand-built cases worked out by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dyhead_serve.decode.box_coding import BoxCoder
from dyhead_serve.modeling.build import build_model
from dyhead_serve.modeling.matcher import Matcher
from dyhead_serve.modeling.rcnn import GeneralizedRCNN
from dyhead_serve.modeling.rcnn.fast_rcnn_loss import FastRCNNLoss
from dyhead_serve.modeling.rcnn.proposal_sampling import ProposalSampler
from dyhead_serve.modeling.rcnn.rpn_loss import RPNLoss
from dyhead_serve.modeling.rcnn.sampling import subsample_labels
from tests.training.tiny_training import IMAGE_SIZE, synthetic_samples, tiny_config

# -- subsample_labels ---------------------------------------------------------------------------


def test_subsample_caps_positives_and_fills_with_negatives():
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -1, -1])  # 3 pos, 10 neg, 2 ignored
    pos, neg = subsample_labels(labels, num_samples=8, positive_fraction=0.25, bg_label=0)
    assert len(pos) == 2 and len(neg) == 6  # int(8 * 0.25) positives, the rest negatives
    assert set(pos.tolist()) <= {0, 1, 2}
    assert set(neg.tolist()) <= set(range(3, 13)) and len(set(neg.tolist())) == 6


def test_subsample_fills_with_negatives_when_positives_are_short_and_keeps_all_when_few():
    labels = torch.tensor([5, 0, 0, 0, 0, 0, -1])  # class 5 is a positive; bg_label 0
    pos, neg = subsample_labels(labels, num_samples=4, positive_fraction=0.5, bg_label=0)
    assert pos.tolist() == [0] and len(neg) == 3  # one positive, three negatives fill the sample
    pos, neg = subsample_labels(labels, num_samples=100, positive_fraction=0.5, bg_label=0)
    assert pos.tolist() == [0] and sorted(neg.tolist()) == [1, 2, 3, 4, 5]


def test_subsample_draws_as_detectron2_does():
    """torch.randperm on the global generator, positives first: the same seed draws the same."""
    labels = torch.tensor([1] * 7 + [0] * 30)
    torch.manual_seed(3)
    pos, neg = subsample_labels(labels, num_samples=10, positive_fraction=0.5, bg_label=0)
    torch.manual_seed(3)
    expected_pos = torch.arange(7)[torch.randperm(7)[:5]]
    expected_neg = torch.arange(7, 37)[torch.randperm(30)[:5]]
    assert torch.equal(pos, expected_pos) and torch.equal(neg, expected_neg)


# -- RPN ----------------------------------------------------------------------------------------


def _rpn_loss(batch_size_per_image: int = 256, **kwargs) -> RPNLoss:
    return RPNLoss(
        BoxCoder([1.0, 1.0, 1.0, 1.0]),
        Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True),
        batch_size_per_image=batch_size_per_image,
        positive_fraction=0.5,
        **kwargs,
    )


# One box [0, 0, 10, 10]; anchor IoUs: 1.0 (positive), 0.5 (ignored, in [0.3, 0.7)), 0.25
# (negative); then 20 far anchors (negative). A second box [100, 100, 110, 110] overlaps its best
# anchor [100, 100, 110, 140] with IoU 0.25 only: a low-quality match, positive anyway.
ANCHORS = torch.tensor(
    [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 40.0], [100.0, 100.0, 110.0, 140.0]]
    + [[200.0 + 10 * i, 0.0, 210.0 + 10 * i, 10.0] for i in range(20)]
)
GT = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
SIZES = torch.tensor([[512, 512]])


def test_rpn_labels_every_anchor_when_the_minibatch_is_large():
    labels, matched = _rpn_loss().label_and_sample_anchors(ANCHORS, [GT], SIZES)
    assert labels.shape == (1, 24) and labels.dtype == torch.int8
    assert labels[0, :4].tolist() == [1, -1, 0, 1]
    assert (labels[0, 4:] == 0).all()  # fewer candidates than the minibatch: all are kept
    torch.testing.assert_close(matched[0, 0], GT[0])
    torch.testing.assert_close(matched[0, 3], GT[1])


def test_rpn_minibatch_counts():
    torch.manual_seed(0)
    labels, _ = _rpn_loss(batch_size_per_image=6).label_and_sample_anchors(
        ANCHORS, [GT, GT[:0]], SIZES.repeat(2, 1)
    )
    first, empty = labels
    # 2 positives (<= 6 * 0.5) are all kept, 4 of the 21 negatives fill the minibatch.
    assert int((first == 1).sum()) == 2 and int((first == 0).sum()) == 4
    assert first[1] == -1  # the ignored anchor is never sampled
    # An image without boxes: every anchor is negative, 6 are sampled.
    assert int((empty == 1).sum()) == 0 and int((empty == 0).sum()) == 6


def test_rpn_boundary_threshold_ignores_anchors_leaving_the_image():
    # IoUs 1 (positive), 20/150 and 0 (negatives); anchor 1 starts at x -5, anchor 2 ends at y 30.
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [-5.0, 0.0, 2.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    size = torch.tensor([[25, 100]])  # (h, w)
    labels, _ = _rpn_loss(boundary_threshold=0).label_and_sample_anchors(anchors, [gt], size)
    assert labels[0].tolist() == [1, -1, -1]
    labels, _ = _rpn_loss(boundary_threshold=-1).label_and_sample_anchors(anchors, [gt], size)
    assert labels[0].tolist() == [1, 0, 0]


def test_rpn_losses_are_normalised_by_the_minibatch_size():
    # Two levels of one anchor each: a perfect match (positive) and a far one (negative).
    anchors = [torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[50.0, 50.0, 60.0, 60.0]])]
    logits = [torch.zeros(1, 1), torch.zeros(1, 1)]  # BCE ln 2 each
    deltas = [torch.tensor([[[0.5, -0.25, 0.0, 0.0]]]), torch.full((1, 1, 4), 9.0)]  # negative: unused
    loss = _rpn_loss(batch_size_per_image=4, cls_weight=1.0, loc_weight=2.0)
    losses = loss(logits, deltas, anchors, [torch.tensor([[0.0, 0.0, 10.0, 10.0]])], torch.tensor([[64, 64]]))
    assert list(losses) == ["loss_rpn_cls", "loss_rpn_loc"]
    # Divided by batch_size_per_image * num_images = 4, not by the 2 anchors sampled.
    assert losses["loss_rpn_cls"].item() == pytest.approx(2 * math.log(2) / 4)
    assert losses["loss_rpn_loc"].item() == pytest.approx(2.0 * (0.5 + 0.25) / 4)  # L1 (beta 0)


# -- ROI heads ----------------------------------------------------------------------------------


def _sampler(batch_size_per_image: int = 512, positive_fraction: float = 0.25, append_gt: bool = True):
    return ProposalSampler(
        Matcher([0.5], [0, 1], allow_low_quality_matches=False),
        num_classes=4,
        batch_size_per_image=batch_size_per_image,
        positive_fraction=positive_fraction,
        append_gt=append_gt,
    )


# IoU with box 0 [0, 0, 10, 10]: 10/12 (foreground), 0.4 (background: one threshold, 0.5), 0.
PROPOSALS = torch.tensor([[0.0, 0.0, 10.0, 12.0], [0.0, 0.0, 10.0, 25.0], [300.0, 300.0, 310.0, 310.0]])
ROI_GT = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 70.0, 70.0]])
ROI_CLASSES = torch.tensor([3, 1])


def _rows(sample) -> list[tuple[list[float], int, list[float] | None]]:
    """(proposal, class, matched box; None for background, whose match is arbitrary), sorted."""
    rows = zip(sample.boxes.tolist(), sample.gt_classes.tolist(), sample.gt_boxes.tolist(), strict=True)
    return sorted(((box, c, gt if c != 4 else None) for box, c, gt in rows), key=lambda row: (row[1], row[0]))


def test_roi_sampling_appends_the_ground_truth_as_proposals():
    (sample,) = _sampler()([PROPOSALS], [ROI_GT], [ROI_CLASSES])
    assert _rows(sample) == [
        ([50.0, 50.0, 70.0, 70.0], 1, [50.0, 50.0, 70.0, 70.0]),  # box 1, only reachable as a gt proposal
        ([0.0, 0.0, 10.0, 10.0], 3, [0.0, 0.0, 10.0, 10.0]),  # box 0 as its own proposal
        ([0.0, 0.0, 10.0, 12.0], 3, [0.0, 0.0, 10.0, 10.0]),
        ([0.0, 0.0, 10.0, 25.0], 4, None),  # background (class 4 = num_classes)
        ([300.0, 300.0, 310.0, 310.0], 4, None),
    ]
    assert (sample.gt_classes[:3] != 4).all() and (sample.gt_classes[3:] == 4).all()  # positives first

    (without,) = _sampler(append_gt=False)([PROPOSALS], [ROI_GT], [ROI_CLASSES])
    assert sorted(without.gt_classes.tolist()) == [3, 4, 4]


def test_roi_sampling_counts_and_images_without_boxes():
    torch.manual_seed(0)
    # Minibatch of 4 with at most int(4 * 0.25) = 1 positive out of 3; 2 negatives is all there is.
    (sample,) = _sampler(batch_size_per_image=4)([PROPOSALS], [ROI_GT], [ROI_CLASSES])
    assert sorted(sample.gt_classes.tolist())[-2:] == [4, 4] and len(sample.gt_classes) == 3
    (empty,) = _sampler()([PROPOSALS], [ROI_GT[:0]], [ROI_CLASSES[:0]])
    assert empty.gt_classes.tolist() == [4, 4, 4]
    torch.testing.assert_close(empty.gt_boxes, empty.boxes)


# -- box head -----------------------------------------------------------------------------------


def _box_loss(**kwargs) -> FastRCNNLoss:
    return FastRCNNLoss(BoxCoder([10.0, 10.0, 5.0, 5.0]), num_classes=2, **kwargs)


def test_box_head_losses_by_hand():
    logits = torch.zeros(3, 3)  # uniform over 2 classes + background: cross-entropy ln 3 each
    gt_classes = torch.tensor([0, 1, 2])  # class 0, class 1, background
    proposals = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    gt_boxes = torch.tensor([[1.0, 0.0, 11.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    deltas = torch.full((3, 8), 9.0)  # read only at (sample, its class)
    deltas[0, 0:4] = 0.0  # target dx = 10 * 1 / 10 = 1: |0 - 1|
    deltas[1, 4:8] = torch.tensor([0.0, 0.0, 0.5, 0.0])  # target 0: 0.5
    losses = _box_loss(box_reg_loss_weight=2.0)(logits, deltas, proposals, gt_classes, gt_boxes)
    assert list(losses) == ["loss_cls", "loss_box_reg"]
    assert losses["loss_cls"].item() == pytest.approx(math.log(3))
    # Summed over the 2 foreground samples, divided by all 3 sampled, times the weight.
    assert losses["loss_box_reg"].item() == pytest.approx(2.0 * (1.0 + 0.5) / 3)

    agnostic = _box_loss()(logits, deltas[:, :4], proposals, gt_classes, gt_boxes)
    # One set of deltas per box: sample 1's are the 9s now.
    assert agnostic["loss_box_reg"].item() == pytest.approx((1.0 + 4 * 9.0) / 3)

    sigmoid = _box_loss(sigmoid_ce=True)(logits, deltas, proposals, gt_classes, gt_boxes)
    assert sigmoid["loss_cls"].item() == pytest.approx(3 * 2 * math.log(2) / 3)  # 2 classes per row


def test_box_head_losses_without_samples_are_zero():
    no_classes = torch.zeros(0, dtype=torch.int64)
    losses = _box_loss()(
        torch.zeros(0, 3), torch.zeros(0, 8), torch.zeros(0, 4), no_classes, torch.zeros(0, 4)
    )
    assert losses["loss_cls"].item() == 0.0 and losses["loss_box_reg"].item() == 0.0


def test_unsupported_loss_types_are_refused():
    with pytest.raises(ValueError, match="BBOX_REG_LOSS_TYPE 'ciou'"):
        _box_loss(box_reg_loss_type="ciou")
    with pytest.raises(ValueError, match=r"RPN\.BBOX_REG_LOSS_TYPE"):
        _rpn_loss(box_reg_loss_type="diou")


# -- the whole model ----------------------------------------------------------------------------

TINY_RCNN = [
    "MODEL.ROI_HEADS.NUM_CLASSES", "6",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "100",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "64",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
]  # fmt: skip


def tiny_rcnn_config(output_dir: Path, *overrides: str):
    """ResNet-18, 32-channel FPN and DyHead, small RPN and ROI minibatches."""
    return tiny_config(output_dir, *TINY_RCNN, *overrides, meta="dyhead_r50_rcnn_fpn_1x")


def _batch(count: int):
    samples = synthetic_samples(count)
    images = torch.stack([s["image"] for s in samples]) / 255.0
    sizes = torch.tensor([[IMAGE_SIZE, IMAGE_SIZE]] * count)
    return images, sizes, [s["gt_boxes"] for s in samples], [s["gt_classes"] for s in samples]


def test_forward_train_losses_gradients_and_seeded_sampling(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_rcnn_config(tmp_path))
    assert isinstance(model, GeneralizedRCNN)
    model.train()
    images, sizes, boxes, classes = _batch(2)
    torch.manual_seed(1)
    losses = model.forward_train(images, sizes, boxes, classes)
    assert list(losses) == ["loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"]
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    torch.stack(list(losses.values())).sum().backward()
    for module in (model.proposal_generator.rpn_head, model.roi_heads.box_predictor, model.backbone):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    # With autograd recording, as above: CPU training's deformable conv path is the same.
    torch.manual_seed(1)
    again = {k: v.detach() for k, v in model.forward_train(images, sizes, boxes, classes).items()}
    torch.manual_seed(2)
    other = {k: v.detach() for k, v in model.forward_train(images, sizes, boxes, classes).items()}
    assert all(torch.equal(losses[k].detach(), again[k]) for k in losses)  # same seed, same minibatches
    assert any(not torch.equal(again[k], other[k]) for k in ("loss_cls", "loss_rpn_cls"))

    with pytest.raises(ValueError, match="ground truth for 1"):
        model.forward_train(images, sizes, boxes[:1], classes[:1])


def test_forward_is_the_same_network_in_training_mode(tmp_path):
    """Training does not change the inference graph: ``forward`` gives the test-time slots."""
    torch.manual_seed(0)
    model = build_model(tiny_rcnn_config(tmp_path))
    images, sizes, _, _ = _batch(1)
    with torch.no_grad():
        evaluated = model(images, sizes)
        model.train()
        trained = model(images, sizes)
    assert trained["proposals"].shape == (1, 50, 4)  # POST_NMS_TOPK_TEST slots
    for key in evaluated:
        torch.testing.assert_close(trained[key], evaluated[key])
