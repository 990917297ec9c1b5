"""mmdetection's ATSS post-processing rules (MMDetATSSDecoder), its box decoding and mmcv's
class-offset NMS, checked by hand and against straightforward re-statements."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dyhead_serve.decode.box_coding import decode_delta_xywh
from dyhead_serve.decode.class_offset_nms import batched_nms_class_offset, nms_mmcv
from dyhead_serve.decode.detectron2_dense import Detectron2DenseDecoder, Detectron2DenseSpec
from dyhead_serve.decode.mmdet_atss import MMDetATSSDecoder, MMDetATSSSpec

ANCHORS_AND_TEST = dict(
    strides=[8, 16], anchor_sizes=[[16.0], [32.0]], anchor_aspect_ratios=[[1.0], [1.0]], anchor_offset=0.5,
    score_threshold=0.05, topk_candidates=1000, nms_threshold=0.6, max_detections=100, num_classes=2,
)  # fmt: skip


def _spec(**kw) -> MMDetATSSSpec:
    base = dict(ANCHORS_AND_TEST, box_means=[0.0] * 4, box_stds=[0.1, 0.1, 0.2, 0.2], min_box_size=0.0)
    base.update(kw)
    return MMDetATSSSpec(**base)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _outputs(
    num_anchors: int, probs: dict[tuple[int, int], float], centerness: dict[int, float] | None = None
):
    logits = torch.full((1, num_anchors, 2), -20.0)
    for (a, c), p in probs.items():
        logits[0, a, c] = _logit(p)
    ctr = torch.full((1, num_anchors), 20.0)
    for a, p in (centerness or {}).items():
        ctr[0, a] = _logit(p)
    return {"logits": logits, "deltas": torch.zeros(1, num_anchors, 4), "centerness": ctr}


def test_topk_ranks_by_probability_and_the_score_is_the_product():
    # Level 0 (2x2 anchors of a 16x16 input): anchor 0 has the higher probability but a low
    # centerness. With a top-1 per level, mmdetection keeps anchor 0 (ranked by probability),
    # scored 0.9 x 0.1 (no square root); the Detectron2 rules keep anchor 3 (ranked by
    # probability x centerness: 0.5 x 1 > 0.9 x 0.1).
    out = _outputs(5, {(0, 0): 0.9, (3, 1): 0.5}, centerness={0: 0.1})
    (det,) = MMDetATSSDecoder(_spec(topk_candidates=1))(out, (16, 16), [(16, 16)], [(16, 16)])
    assert det.classes.tolist() == [0]
    torch.testing.assert_close(det.scores, torch.tensor([0.09]))
    detectron2 = Detectron2DenseSpec(
        **dict(ANCHORS_AND_TEST, topk_candidates=1), kind="atss", box_weights=[10.0, 10.0, 5.0, 5.0]
    )
    (d2,) = Detectron2DenseDecoder(detectron2)(out, (16, 16), [(16, 16)], [(16, 16)])
    assert d2.classes.tolist() == [1]


def test_boxes_are_clipped_to_the_resized_image_then_mapped_back_before_nms():
    # Anchor 3 of level 0: centre (12, 12), 16 px -> (4, 4, 20, 20), clipped to the 16x16 image
    # -> (4, 4, 16, 16); the original image was 32x24 (h x w): scale factors w 16/24, h 16/32.
    out = _outputs(5, {(3, 0): 0.9})
    (det,) = MMDetATSSDecoder(_spec())(out, (16, 16), [(16, 16)], [(32, 24)])
    expected = torch.tensor([4.0, 4.0, 16.0, 16.0]) * torch.tensor([1 / (16 / 24), 1 / (16 / 32)] * 2)
    assert torch.equal(det.boxes[0], expected)


def test_min_box_size_drops_empty_boxes_and_needs_original_sizes():
    deltas = torch.zeros(1, 5, 4)
    deltas[0, 0, 2] = -100.0  # width clamped to exp(-4.135) * 16 = 0.26 px, but clipped to 0 at x < 0
    out = _outputs(5, {(0, 0): 0.9})
    out["deltas"] = deltas
    out["deltas"][0, 0, 0] = -100.0  # centre far left: the box is clipped to x0 = x1 = 0
    (det,) = MMDetATSSDecoder(_spec())(out, (16, 16), [(16, 16)], [(16, 16)])
    assert len(det.scores) == 0
    (kept,) = MMDetATSSDecoder(_spec(min_box_size=-1.0))(out, (16, 16), [(16, 16)], [(16, 16)])
    assert len(kept.scores) == 1
    with pytest.raises(ValueError, match="original size"):
        MMDetATSSDecoder(_spec())(out, (16, 16), [(16, 16)], [])


def test_spec_validation():
    with pytest.raises(ValueError, match="4 values"):
        _spec(box_stds=[0.1, 0.1, 0.2])


def test_delta_xywh_decoding_by_hand():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    deltas = torch.tensor([[1.0, -1.0, 0.5, 100.0]])
    out = decode_delta_xywh(deltas, boxes, [0.0] * 4, [0.1, 0.1, 0.2, 0.2], max_hw=None)
    dw, dh = 0.5 * 0.2, math.log(1000 / 16)  # dh clamped to |log(16/1000)|
    cx, cy = 5 + 10 * 0.1, 10 + 20 * -0.1
    w, h = 10 * math.exp(dw), 20 * math.exp(dh)
    torch.testing.assert_close(out, torch.tensor([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]]))
    clipped = decode_delta_xywh(deltas, boxes, [0.0] * 4, [0.1, 0.1, 0.2, 0.2], max_hw=(30, 8))
    torch.testing.assert_close(clipped, torch.tensor([[cx - w / 2, 0.0, 8.0, 30.0]]))
    # the stds multiply in float32: 0.1 * d, not d / 10
    d = torch.tensor([[0.3, 0.0, 0.0, 0.0]])
    one = decode_delta_xywh(d, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), [0.0] * 4, [0.1] * 4, None)
    assert one[0, 0] == torch.tensor(0.3) * torch.tensor(0.1) + 0.5 - 0.5


def _greedy_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """mmcv's nms_cpu restated: torch's (unstable) descending sort, float32 overlaps, suppression
    when the overlap exceeds the float32 threshold."""
    order = torch.from_numpy(scores).sort(0, descending=True)[1].numpy()
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep, thr = [], np.float32(threshold)
    for position, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        for j in order[position + 1 :]:
            w = max(np.float32(0), min(x2[i], x2[j]) - max(x1[i], x1[j]))
            h = max(np.float32(0), min(y2[i], y2[j]) - max(y1[i], y1[j]))
            inter = w * h
            if inter / (areas[i] + areas[j] - inter) > thr:
                suppressed[j] = True
    return keep


@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_the_greedy_restatement_with_ties(seed: int):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 50, (300, 2)).astype(np.float32)
    wh = rng.uniform(5, 40, (300, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.choice(np.float32([0.2, 0.5, 0.7, 0.9]), 300)  # many ties
    keep = nms_mmcv(torch.from_numpy(boxes), torch.from_numpy(scores), 0.6)
    assert keep.tolist() == _greedy_nms(boxes, scores, 0.6)


def test_an_overlap_equal_to_the_float32_threshold_is_kept():
    # IoU = 60 / (100 + 60 - 60), which float32 rounds to exactly float32(0.6). mmcv compares in
    # float32 (0.6f > 0.6f is false: kept); a float64 threshold would suppress it
    # (0.6000000238 > 0.6), as torchvision's kernel does when handed 0.6.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 6.0, 10.0]])
    scores = torch.tensor([0.9, 0.8])
    assert nms_mmcv(boxes, scores, 0.6).tolist() == [0, 1]
    assert nms_mmcv(boxes, scores, 0.59).tolist() == [0]


def test_class_offsets_and_the_split_path_agree():
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 500, (400, 2)).astype(np.float32)
    boxes = torch.from_numpy(np.concatenate([xy, xy + rng.uniform(10, 100, (400, 2)).astype(np.float32)], 1))
    scores = torch.from_numpy(rng.uniform(0, 1, 400).astype(np.float32))
    classes = torch.from_numpy(rng.integers(0, 5, 400))
    together = batched_nms_class_offset(boxes, scores, classes, 0.5)
    per_class = batched_nms_class_offset(boxes, scores, classes, 0.5, split_threshold=1)
    assert together.tolist() == per_class.tolist()
    # boxes of different classes never suppress each other
    same = torch.zeros(2, dtype=torch.int64)
    pair = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    assert batched_nms_class_offset(pair, torch.tensor([0.9, 0.8]), same, 0.5).tolist() == [0]
    assert batched_nms_class_offset(pair, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), 0.5).tolist() == [
        0,
        1,
    ]
    assert (
        batched_nms_class_offset(
            torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5
        ).numel()
        == 0
    )
