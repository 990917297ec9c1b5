"""Test-time post-processing of Faster R-CNN outputs, as Detectron2's ``fast_rcnn_inference``
followed by its ``detector_postprocess``.

Like :mod:`dyhead_serve.decode.detectron2_dense`, it works on the raw outputs every backend
returns, so one implementation decides the detections whichever backend ran the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from dyhead_serve.artifact_rules import (
    Rule,
    boolean,
    dataclass_record,
    integer,
    list_of,
    number,
    one_of,
    record,
)
from dyhead_serve.decode.base import DecodedDetections
from dyhead_serve.decode.box_coding import BoxCoder
from dyhead_serve.decode.raw_outputs import RawOutputs, check_output_dim
from dyhead_serve.decode.rescale import RescaledAfterDecoding

__all__ = [
    "RCNN_FIELD_RULES",
    "RCNN_TYPE",
    "RCNNDecoder",
    "RCNNDecoderSpec",
    "fast_rcnn_inference_single_image",
]

RCNN_TYPE = "rcnn"


@dataclass
class RCNNDecoderSpec:
    """Everything the decoder needs; plain data, so it travels with exported models.

    ``sigmoid_scores`` is Detectron2's ``ROI_BOX_HEAD.USE_SIGMOID_CE`` (per-class sigmoid instead
    of a softmax over the classes and background).
    """

    box_weights: list[float]
    score_threshold: float
    nms_threshold: float
    max_detections: int
    num_classes: int
    sigmoid_scores: bool = False


_PROBABILITY = number(0.0, 1.0)

RCNN_FIELD_RULES: dict[str, Rule] = {
    "box_weights": list_of(number(0.0, 1e6, above_low=True), min_length=4, max_length=4),
    "score_threshold": _PROBABILITY,
    "nms_threshold": _PROBABILITY,
    "max_detections": integer(-1, 100_000),  # negative: all (Detectron2's convention)
    "num_classes": integer(1, 100_000),
    "sigmoid_scores": boolean,
}
"""Every field of an ``"rcnn"`` spec in model.json, with its rule."""


def fast_rcnn_inference_single_image(
    boxes: Tensor,
    scores: Tensor,
    image_size: tuple[int, int],
    score_threshold: float,
    nms_threshold: float,
    max_detections: int,
) -> DecodedDetections:
    """Threshold, class-wise NMS and top-k over one image's per-class boxes.

    Args:
        boxes: Tensor[R, 4K] decoded boxes, one per proposal and class (or Tensor[R, 4] when the
            regression is class agnostic).
        scores: Tensor[R, K + 1] class probabilities, background last.
        image_size: (h, w) boxes are clipped to.
        max_detections: keep at most this many (negative: all).

    Returns:
        Detections in the resized image's pixels, ordered by score, highest first.
    """
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    boxes, scores = boxes[finite], scores[finite]
    scores = scores[:, :-1]
    num_box_classes = boxes.shape[1] // 4
    h, w = image_size
    boxes = boxes.reshape(-1, 4)
    boxes = torch.stack(
        (boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)),
        dim=-1,
    ).reshape(-1, num_box_classes, 4)  # [R, K or 1, 4]
    candidates = scores > score_threshold  # [R, K]
    proposal_idx, classes = torch.nonzero(candidates).unbind(dim=1)
    boxes = boxes[proposal_idx, 0] if num_box_classes == 1 else boxes[candidates]
    scores = scores[candidates]
    keep = batched_nms(boxes, scores, classes, nms_threshold)
    if max_detections >= 0:
        keep = keep[:max_detections]
    return DecodedDetections(boxes[keep], scores[keep], classes[keep])


class RCNNDecoder(RescaledAfterDecoding):
    """Softmax, per-class box decoding, clipping, threshold, class-wise NMS, top detections, then
    Detectron2's rescale to the original image (clip, drop empty boxes)."""

    def __init__(self, spec: RCNNDecoderSpec) -> None:
        self.spec = spec
        self.box_coder = BoxCoder(spec.box_weights)

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def to_dict(self) -> dict[str, Any]:
        """``{"type": "rcnn", "spec": {...}}``, for a model artifact's JSON."""
        return {"type": RCNN_TYPE, "spec": asdict(self.spec)}

    @classmethod
    def from_dict(cls, data: Any, path: str = "decoder") -> RCNNDecoder:
        """Read an ``"rcnn"`` entry of model.json (what :meth:`to_dict` writes).

        Raises:
            ArtifactError: naming the field that is missing, unknown or out of range.
        """
        entry = record(
            {"type": one_of(RCNN_TYPE), "spec": dataclass_record(RCNNDecoderSpec, RCNN_FIELD_RULES)},
            ("type", "spec"),
        )(data, path)
        return cls(RCNNDecoderSpec(**entry["spec"]))

    def graph_outputs(self) -> dict[str, Sequence[int] | None]:
        classes = self.spec.num_classes
        return {
            "proposals": [4],
            "num_proposals": None,
            "logits": [classes + 1],
            "deltas": [4, 4 * classes],  # class-agnostic or per-class regression
        }

    def decode_resized(
        self,
        outputs: RawOutputs,
        padded_hw: tuple[int, int],
        image_sizes: Sequence[tuple[int, int]],
        score_threshold: float | None = None,
    ) -> list[DecodedDetections]:
        """Decode a batch into the resized images' pixels (Detectron2's ``fast_rcnn_inference``,
        before ``detector_postprocess``).

        Args:
            outputs: as :class:`~dyhead_serve.modeling.rcnn.detector.GeneralizedRCNN` returns
                them: ``proposals`` Tensor[N, P, 4], ``num_proposals`` Tensor[N], ``logits``
                Tensor[N, P, K + 1], ``deltas`` Tensor[N, P, 4K]; only the first
                ``num_proposals[i]`` slots of image i are read.
            padded_hw: (H, W) of the network input (unused: proposals are already in pixels).
            image_sizes: (h, w) of each resized image before padding; boxes are clipped to it.
            score_threshold: overrides the configured threshold when given.
        """
        classes = self.spec.num_classes
        check_output_dim(outputs, "logits", -1, classes + 1, "class scores (classes + background)")
        if outputs["deltas"].shape[-1] != 4:  # 4: class-agnostic regression
            check_output_dim(outputs, "deltas", -1, 4 * classes, "box deltas (4 per class)")
        threshold = self.spec.score_threshold if score_threshold is None else score_threshold
        counts = outputs["num_proposals"].tolist()
        if len(counts) != len(image_sizes):
            raise ValueError(
                f"outputs hold {len(counts)} images but {len(image_sizes)} image sizes were given"
            )
        results = []
        for i, (count, image_size) in enumerate(zip(counts, image_sizes, strict=True)):
            proposals = outputs["proposals"][i, :count].float()
            logits = outputs["logits"][i, :count].float()
            deltas = outputs["deltas"][i, :count].float()
            boxes = self.box_coder.apply_deltas(deltas, proposals)  # [R, 4K]
            probs = logits.sigmoid() if self.spec.sigmoid_scores else logits.softmax(dim=-1)
            results.append(
                fast_rcnn_inference_single_image(
                    boxes, probs, image_size, threshold, self.spec.nms_threshold, self.spec.max_detections
                )
            )
        return results
