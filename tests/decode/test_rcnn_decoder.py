"""Faster R-CNN's decoder with values worked out by hand: ``fast_rcnn_inference`` (threshold,
NMS, order, clipping), softmax and box weights, padding slots, and the map back to the original
image."""

from __future__ import annotations

import math

import pytest
import torch

from dyhead_serve.decode.rcnn import RCNNDecoder, RCNNDecoderSpec, fast_rcnn_inference_single_image


def _square(side: float, x0: float = 0.0, y0: float = 0.0) -> list[float]:
    return [float(x0), float(y0), float(x0 + side), float(y0 + side)]


# ---------------------------------------------------------------- fast_rcnn_inference


def test_fast_rcnn_threshold_nms_order_and_clipping():
    # 3 proposals, 2 classes (+ background, last column)
    scores = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.06, 0.04, 0.9]])
    a, b = _square(10, 5, 5), _square(10, 6, 5)  # IoU(a, b) = 90 / 110 = 0.82
    boxes = torch.tensor([a + a, b + b, [*_square(10, 50, 50), -5.0, 40.0, 30.0, 45.0]])
    det = fast_rcnn_inference_single_image(boxes, scores, (40, 25), 0.25, 0.5, max_detections=100)
    # (0, c1) = 0.2 and row 2 are under the threshold, the background column is never a class;
    # (1, c0) is suppressed by (0, c0); (1, c1) survives: NMS is per class.
    assert det.scores.tolist() == pytest.approx([0.7, 0.3])
    assert det.classes.tolist() == [0, 1]
    torch.testing.assert_close(det.boxes, torch.tensor([a, b]))
    det = fast_rcnn_inference_single_image(boxes, scores, (40, 25), 0.01, 0.5, max_detections=100)
    # (0, c1) = 0.2 now passes the threshold but is suppressed by (1, c1) = 0.3 in class 1
    assert det.scores.tolist() == pytest.approx([0.7, 0.3, 0.06, 0.04])
    assert det.classes.tolist() == [0, 1, 0, 1]
    # row 2 is clipped to the 25 x 40 image: class 0 box lies right of it (zero width, still
    # returned, as in Detectron2), class 1 box becomes (0, 40, 25, 40)
    torch.testing.assert_close(
        det.boxes[2:], torch.tensor([[25.0, 40.0, 25.0, 40.0], [0.0, 40.0, 25.0, 40.0]])
    )
    det = fast_rcnn_inference_single_image(boxes, scores, (40, 25), 0.01, 0.5, max_detections=2)
    assert det.scores.tolist() == pytest.approx([0.7, 0.3])


def test_decoder_softmax_box_weights_and_padding_slots():
    spec = RCNNDecoderSpec(
        box_weights=[10.0, 10.0, 5.0, 5.0], score_threshold=0.05, nms_threshold=0.5, max_detections=100,
        num_classes=2,
    )  # fmt: skip
    decoder = RCNNDecoder(spec)
    proposals = torch.zeros(1, 3, 4)
    proposals[0, 0] = torch.tensor(_square(10, 10, 10))
    proposals[0, 1] = torch.tensor(_square(10, 60, 10))
    logits = torch.zeros(1, 3, 3)
    logits[0, 0] = torch.tensor([math.log(8.0), 0.0, 0.0])  # softmax: 0.8, 0.1, 0.1
    logits[0, 1] = torch.tensor([0.0, 0.0, 10.0])  # background
    logits[0, 2] = torch.tensor([20.0, 0.0, 0.0])  # a padding slot: never read
    deltas = torch.zeros(1, 3, 8)
    # class 0 of proposal 0: dx = 10 -> shift by 10 / 10 widths; dw = 5 log 2 -> twice as wide
    deltas[0, 0, :4] = torch.tensor([10.0, 0.0, 5 * math.log(2.0), 0.0])
    outputs = {"proposals": proposals, "num_proposals": torch.tensor([2]), "logits": logits, "deltas": deltas}
    (det,) = decoder.decode_resized(outputs, (64, 96), [(64, 96)])
    assert det.classes.tolist() == [0, 1]
    assert det.scores.tolist() == pytest.approx([0.8, 0.1])
    # centre (15, 15) + 10 -> (25, 15), width 20
    torch.testing.assert_close(det.boxes[0], torch.tensor([15.0, 10.0, 35.0, 20.0]))
    torch.testing.assert_close(det.boxes[1], torch.tensor(_square(10, 10, 10)))
    (det,) = decoder.decode_resized(outputs, (64, 96), [(64, 96)], score_threshold=0.5)
    assert det.classes.tolist() == [0]
    # called as every decoder is: in the pixels of the original image (here twice as large)
    (det,) = decoder(outputs, (64, 96), [(64, 96)], [(128, 192)], score_threshold=0.5)
    torch.testing.assert_close(det.boxes, torch.tensor([[30.0, 20.0, 70.0, 40.0]]))
    assert det.classes.tolist() == [0]


def test_decoder_spec_round_trips_through_to_dict():
    spec = RCNNDecoderSpec([10.0, 10.0, 5.0, 5.0], 0.05, 0.5, 100, 80)
    data = RCNNDecoder(spec).to_dict()
    assert data["type"] == "rcnn" and RCNNDecoderSpec(**data["spec"]) == spec
    assert RCNNDecoder.from_dict(data).spec == spec
