"""Faster R-CNN building blocks with values worked out by hand: ROI pooler level assignment and
ROIAlign, RPN proposal selection (the decoder: tests/decode/test_rcnn_decoder.py)."""

from __future__ import annotations

import pytest
import torch

from dyhead_serve.decode.anchors import AnchorGenerator
from dyhead_serve.decode.box_coding import BoxCoder
from dyhead_serve.modeling.rcnn.pooler import ROIPooler, assign_boxes_to_levels
from dyhead_serve.modeling.rcnn.rpn import RPN, StandardRPNHead, select_proposals


def _square(side: float, x0: float = 0.0, y0: float = 0.0) -> list[float]:
    return [float(x0), float(y0), float(x0 + side), float(y0 + side)]


# ---------------------------------------------------------------- ROI pooler


@pytest.mark.parametrize(
    ("side", "level"),
    [
        (224, 4),  # canonical size -> canonical level
        (112, 3),
        (448, 5),
        (223, 3),  # floor(4 + log2(223 / 224)) = 3
        (56, 2),
        (28, 2),  # level 1 clamped to P2
        (896, 5),  # level 6 clamped to P5
        (0, 2),  # empty box (padding): log2(1e-8) -> clamped to P2
    ],
)
def test_level_assignment_by_box_size(side, level):
    boxes = torch.tensor([_square(side, 10.0, 20.0)])
    assert assign_boxes_to_levels(boxes, min_level=2, max_level=5).tolist() == [level - 2]


def test_level_assignment_uses_sqrt_area():
    # 448 x 112 has the area of a 224 x 224 box
    assert assign_boxes_to_levels(torch.tensor([[0.0, 0.0, 448.0, 112.0]]), 2, 5).tolist() == [2]


def test_pooler_reads_each_box_from_its_level():
    strides = [4, 8, 16, 32]
    # level l is filled with the constant l, so the pooled value names the level read.
    features = [torch.full((2, 1, 256 // s, 256 // s), float(level)) for level, s in enumerate(strides)]
    pooler = ROIPooler(output_size=2, strides=strides, sampling_ratio=0, aligned=True)
    boxes = torch.tensor([[_square(224, 8, 8), _square(56, 8, 8)], [_square(112, 8, 8), _square(240, 8, 8)]])
    pooled = pooler(features, boxes)  # [4, 1, 2, 2], image-major
    assert pooled.shape == (4, 1, 2, 2)
    assert pooled.mean(dim=(1, 2, 3)).tolist() == [2.0, 0.0, 1.0, 2.0]


def test_pooler_batch_index_and_roi_align_v2_half_pixel_shift():
    # feature value = x coordinate (in feature pixels) on image 0, 100 + x on image 1
    ramp = torch.arange(16.0).expand(16, 16)
    feature = torch.stack([ramp, ramp + 100.0])[:, None]  # [2, 1, 16, 16], stride 4
    boxes = torch.tensor([[[8.0, 8.0, 24.0, 24.0]], [[8.0, 8.0, 24.0, 24.0]]])
    # The box covers feature x in [2, 6]; ROIAlignV2 shifts it to [1.5, 5.5] and averages the
    # ramp at 4 samples (adaptive: ceil(4 / 1)) 2, 3, 4, 5 -> 3.5. Legacy ROIAlign: 2.5..5.5 -> 4.
    aligned = ROIPooler(output_size=1, strides=[4], aligned=True)([feature], boxes)
    legacy = ROIPooler(output_size=1, strides=[4], aligned=False)([feature], boxes)
    assert aligned.flatten().tolist() == [3.5, 103.5]
    assert legacy.flatten().tolist() == [4.0, 104.0]


def test_pooler_rejects_non_pyramid_strides():
    with pytest.raises(ValueError, match="double"):
        ROIPooler(7, strides=[4, 16])
    with pytest.raises(ValueError, match="powers of two"):
        ROIPooler(7, strides=[4, 12])


# ---------------------------------------------------------------- RPN proposal selection


def test_select_proposals_clips_drops_empty_and_orders():
    boxes = torch.tensor(
        [
            [-5.0, -5.0, 10.0, 10.0],  # clipped to (0, 0, 10, 10)
            [40.0, 0.0, 50.0, 10.0],  # right of the 30-px-wide image: width 0 after clipping
            [12.0, 2.0, 20.0, 18.0],
            [1.0, 1.0, 2.0, 2.0],  # 1 x 1: kept with min_box_size 0, dropped with 1
            [float("nan"), 0.0, 5.0, 5.0],  # not finite
        ]
    )
    scores = torch.tensor([0.5, 3.0, 0.9, 0.1, 5.0])
    levels = torch.zeros(5, dtype=torch.int64)
    size = torch.tensor([20, 30])
    kept, kept_scores = select_proposals(boxes, scores, levels, size, nms_threshold=0.7, post_nms_topk=10)
    assert kept_scores.tolist() == pytest.approx([0.9, 0.5, 0.1])
    torch.testing.assert_close(kept[1], torch.tensor([0.0, 0.0, 10.0, 10.0]))
    kept, _ = select_proposals(boxes, scores, levels, size, 0.7, 10, min_box_size=1.0)
    assert len(kept) == 2


def test_select_proposals_nms_within_level_only_and_post_topk():
    boxes = torch.tensor([_square(10), _square(10, 1), _square(10), _square(10, 15)])
    scores = torch.tensor([4.0, 3.0, 2.0, 1.0])
    levels = torch.tensor([0, 0, 1, 1])
    size = torch.tensor([100, 100])
    # box 1 overlaps box 0 (IoU 0.82) on the same level: suppressed; box 2 is identical to box 0
    # but on another level: kept.
    _, kept_scores = select_proposals(boxes, scores, levels, size, nms_threshold=0.7, post_nms_topk=10)
    assert kept_scores.tolist() == [4.0, 2.0, 1.0]
    _, kept_scores = select_proposals(boxes, scores, levels, size, nms_threshold=0.7, post_nms_topk=2)
    assert kept_scores.tolist() == [4.0, 2.0]


def _rpn(pre_nms_topk: int, post_nms_topk: int, nms_threshold: float = 0.7) -> RPN:
    anchors = AnchorGenerator(strides=[8, 16], sizes=[[8.0], [16.0]], aspect_ratios=[[1.0], [1.0]])
    return RPN(StandardRPNHead(4, 1), anchors, BoxCoder([1.0, 1.0, 1.0, 1.0]), pre_nms_topk, post_nms_topk,
               nms_threshold)  # fmt: skip


def test_per_level_topk_comes_before_nms():
    rpn = _rpn(pre_nms_topk=2, post_nms_topk=10)
    # level 0: 2 x 2 anchors (8 px, centres (0,0), (8,0), (0,8), (8,8)); level 1: one 16-px anchor
    logits = [torch.tensor([[0.1, 0.9, 0.5, 0.3]]), torch.tensor([[-1.0]])]
    deltas = [torch.zeros(1, 4, 4), torch.zeros(1, 1, 4)]
    anchors = rpn.anchor_generator.grid_anchors([(2, 2), (1, 1)])
    boxes, scores, levels = rpn._top_candidates(logits, deltas, anchors)
    torch.testing.assert_close(scores, torch.tensor([[0.9, 0.5, -1.0]]))  # best 2 of level 0, then level 1
    assert levels.tolist() == [0, 0, 1]
    torch.testing.assert_close(boxes[0, 0], torch.tensor([4.0, -4.0, 12.0, 4.0]))  # anchor 1, dx = 0


def test_rpn_pads_to_post_nms_topk_and_counts():
    torch.manual_seed(0)
    rpn = _rpn(pre_nms_topk=3, post_nms_topk=8).eval()
    features = [torch.randn(2, 4, 4, 4), torch.randn(2, 4, 2, 2)]
    image_sizes = torch.tensor([[30, 32], [20, 12]])
    with torch.no_grad():
        proposals, objectness, counts = rpn(features, image_sizes)
    assert proposals.shape == (2, 8, 4) and objectness.shape == (2, 8) and counts.dtype == torch.int64
    for i, (h, w) in enumerate(image_sizes.tolist()):
        n = int(counts[i])
        assert n <= 6  # at most 3 candidates from each of the 2 levels
        valid = proposals[i, :n]
        assert (valid[:, 0::2] <= w).all() and (valid[:, 1::2] <= h).all() and (valid >= 0).all()
        assert (proposals[i, n:] == 0).all() and (objectness[i, n:] == 0).all()
        assert objectness[i, :n].tolist() == sorted(objectness[i, :n].tolist(), reverse=True)
    # image 0: all 6 candidates lie in the image and no two of a level overlap
    assert counts[0] == 6
