"""Detectron2's decoding of dense outputs: thresholds, per-level top-k, class-wise NMS and its
order, and the map back to the original image."""

from __future__ import annotations

import pytest
import torch

from dyhead_serve.decode.detectron2_dense import Detectron2DenseDecoder, Detectron2DenseSpec


def _spec(kind: str, **kw) -> Detectron2DenseSpec:
    base = dict(
        kind=kind, strides=[8, 16], anchor_sizes=[[16.0], [32.0]], anchor_aspect_ratios=[[1.0], [1.0]],
        anchor_offset=0.5, box_weights=[1.0, 1.0, 1.0, 1.0], score_threshold=0.05, topk_candidates=1000,
        nms_threshold=0.5, max_detections=100, num_classes=2,
    )  # fmt: skip
    base.update(kw)
    return Detectron2DenseSpec(**base)


def _logit(p: float) -> float:
    return float(torch.logit(torch.tensor(p)))


def _outputs(num_anchors: int, probs: dict[tuple[int, int], float], centerness=None):
    logits = torch.full((1, num_anchors, 2), -20.0)
    for (a, c), p in probs.items():
        logits[0, a, c] = _logit(p)
    out = {"logits": logits, "deltas": torch.zeros(1, num_anchors, 4)}
    out["centerness"] = torch.full((1, num_anchors), 20.0) if centerness is None else centerness
    return out


def test_retinanet_threshold_nms_and_order():
    dec = Detectron2DenseDecoder(_spec("retinanet"))
    # 16x16 input: level 0 has 2x2 anchors (16px, centres at 4/12), level 1 has 1x1 (32px).
    # anchors 0 and 1 overlap (IoU 0.33 < 0.5), anchor 4 (level 1) contains anchor 0 with IoU 0.25.
    out = _outputs(5, {(0, 0): 0.9, (0, 1): 0.8, (1, 0): 0.7, (4, 0): 0.6, (2, 1): 0.04})
    (det,) = dec.decode_resized(out, (16, 16), [(16, 16)])
    assert det.scores.tolist() == sorted(det.scores.tolist(), reverse=True)
    assert len(det.scores) == 4  # 0.04 is under the threshold
    assert det.classes.tolist() == [0, 1, 0, 0]
    torch.testing.assert_close(det.boxes[0], torch.tensor([-4.0, -4.0, 12.0, 12.0]))


def test_nms_is_per_class():
    dec = Detectron2DenseDecoder(_spec("retinanet", nms_threshold=0.1))
    out = _outputs(5, {(0, 0): 0.9, (1, 0): 0.8, (0, 1): 0.7})
    (det,) = dec.decode_resized(out, (16, 16), [(16, 16)])
    # anchor 1 (class 0) overlaps anchor 0 (class 0) with IoU 1/3 > 0.1: suppressed; class 1 kept
    assert det.classes.tolist() == [0, 1]


def test_topk_per_level_and_max_detections():
    dec = Detectron2DenseDecoder(_spec("retinanet", topk_candidates=1, nms_threshold=1.0))
    out = _outputs(5, {(0, 0): 0.9, (3, 0): 0.95, (4, 1): 0.5})
    (det,) = dec.decode_resized(out, (16, 16), [(16, 16)])
    assert sorted(det.scores.tolist(), reverse=True) == det.scores.tolist()
    assert len(det.scores) == 2  # one per level
    dec2 = Detectron2DenseDecoder(_spec("retinanet", max_detections=1, nms_threshold=1.0))
    (det2,) = dec2.decode_resized(out, (16, 16), [(16, 16)])
    assert len(det2.scores) == 1 and abs(det2.scores.item() - 0.95) < 1e-6


def test_call_maps_to_the_original_image_clips_and_drops_empty_boxes():
    """Detectron2's detector_postprocess, inside the decoder: every decoder returns original pixels."""
    dec = Detectron2DenseDecoder(_spec("retinanet"))
    out = _outputs(5, {(0, 0): 0.9, (1, 0): 0.7})
    out["deltas"][0, 1] = torch.tensor([-10.0, 0.0, 0.0, 0.0])  # anchor 1 moved 160 px left
    (resized,) = dec.decode_resized(out, (16, 16), [(16, 16)])
    assert resized.scores.tolist() == pytest.approx([0.9, 0.7])
    torch.testing.assert_close(
        resized.boxes, torch.tensor([[-4.0, -4.0, 12.0, 12.0], [-156.0, -4.0, -140.0, 12.0]])
    )
    (det,) = dec(out, (16, 16), [(16, 16)], [(32, 48)])  # the original was 32 high, 48 wide
    # x scaled by 3, y by 2, clipped to the 48 x 32 image; the second box is left empty: dropped
    assert det.scores.tolist() == pytest.approx([0.9])
    assert det.boxes.tolist() == [[0.0, 0.0, 36.0, 24.0]]
    with pytest.raises(ValueError, match="original sizes"):
        dec(out, (16, 16), [(16, 16)], [])


def test_atss_threshold_applies_before_centerness():
    dec = Detectron2DenseDecoder(_spec("atss"))
    ctr = torch.full((1, 5), 20.0)
    ctr[0, 0] = _logit(0.1)
    out = _outputs(5, {(0, 0): 0.06, (1, 0): 0.04}, centerness=ctr)
    (det,) = dec.decode_resized(out, (16, 16), [(16, 16)])
    # 0.06 passes the 0.05 threshold and scores 0.06 * 0.1; 0.04 does not pass despite centerness 1
    assert len(det.scores) == 1
    assert abs(det.scores.item() - 0.006) < 1e-6


def test_score_threshold_override_and_size_check():
    dec = Detectron2DenseDecoder(_spec("retinanet"))
    out = _outputs(5, {(0, 0): 0.3})
    (det,) = dec.decode_resized(out, (16, 16), [(16, 16)], score_threshold=0.5)
    assert len(det.scores) == 0
    try:
        dec(out, (32, 32), [(32, 32)], [(32, 32)])
    except ValueError as exc:
        assert "size divisibility" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("a wrong input size must be refused")


def test_outputs_that_do_not_fit_the_spec_are_refused():
    """A model.json copied from another model (here: fewer classes) must not decode into wrong
    labels: the decoder compares the outputs with its spec."""
    from dataclasses import replace

    from dyhead_serve.decode.raw_outputs import OutputShapeError
    from dyhead_serve.runtime.loader import load_backend
    from dyhead_serve.runtime.options import ModelOptions

    backend = load_backend(ModelOptions("default", backend="torch", device="cpu"))
    spec = backend.decoder.spec
    outputs = backend.infer(torch.zeros(1, 3, 256, 256), torch.tensor([[256, 256]]))
    assert backend.decoder(outputs, (256, 256), [(256, 256)], [(256, 256)])  # the spec that fits decodes
    with pytest.raises(OutputShapeError, match=r"'logits' output has 6 class scores, but .* declares 1"):
        Detectron2DenseDecoder(replace(spec, num_classes=1))(outputs, (256, 256), [(256, 256)], [(256, 256)])
    with pytest.raises(OutputShapeError, match="anchors for a"):
        Detectron2DenseDecoder(replace(spec, strides=[4, 8, 16, 32, 64]))(
            outputs, (256, 256), [(256, 256)], [(256, 256)]
        )
