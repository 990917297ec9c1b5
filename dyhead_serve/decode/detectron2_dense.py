"""Inference post-processing of dense (anchor-based, one-stage) detectors as Detectron2 does it
(the official DyHead code): ATSS and RetinaNet heads.

It works on the flattened raw outputs every backend returns (torch, ONNX Runtime, TensorRT),
so one implementation decides the detections whichever backend ran the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from dyhead_serve.decode.anchors import AnchorGenerator
from dyhead_serve.decode.base import DecodedDetections
from dyhead_serve.decode.box_coding import BoxCoder
from dyhead_serve.decode.dense_format import DENSE_HEAD_KINDS, DENSE_TYPE, read_dense_spec
from dyhead_serve.decode.raw_outputs import RawOutputs
from dyhead_serve.decode.rescale import RescaledAfterDecoding

__all__ = ["Detectron2DenseDecoder", "Detectron2DenseSpec"]


@dataclass
class Detectron2DenseSpec:
    """Everything the decoder needs; plain data, so it travels with exported models.

    ``kind`` is ``"atss"`` (class score times centerness, threshold before the product) or
    ``"retinanet"`` (class score alone). Anchors are Detectron2's ``DefaultAnchorGenerator``'s
    (:class:`~dyhead_serve.decode.anchors.AnchorGenerator`); ``box_weights`` its
    ``Box2BoxTransform`` weights.
    """

    kind: str
    strides: list[int]
    anchor_sizes: list[list[float]]
    anchor_aspect_ratios: list[list[float]]
    anchor_offset: float
    box_weights: list[float]
    score_threshold: float
    topk_candidates: int
    nms_threshold: float
    max_detections: int
    num_classes: int

    def __post_init__(self) -> None:
        if self.kind not in DENSE_HEAD_KINDS:
            raise ValueError(f"unknown dense decoder kind {self.kind!r}")


class Detectron2DenseDecoder(RescaledAfterDecoding):
    """Detectron2's dense inference: per level, keep class probabilities above
    ``score_threshold``, rank them by probability (times centerness for ATSS) and keep
    ``topk_candidates``; decode with ``box_weights``; class-wise NMS in resized-image pixels; keep
    ``max_detections``; then rescale to the original image, clip and drop empty boxes
    (``detector_postprocess``)."""

    def __init__(self, spec: Detectron2DenseSpec) -> None:
        self.spec = spec
        # model.json may give one anchor entry for every level
        self.anchor_generator = AnchorGenerator.per_level(
            spec.strides, spec.anchor_sizes, spec.anchor_aspect_ratios, spec.anchor_offset
        )
        self.box_coder = BoxCoder(spec.box_weights)

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def to_dict(self) -> dict[str, Any]:
        """``{"type": "dense", "spec": {...}}`` (no ``rules``: absent means Detectron2's)."""
        return {"type": DENSE_TYPE, "spec": asdict(self.spec)}

    @classmethod
    def from_dict(cls, data: Any, path: str = "decoder") -> Detectron2DenseDecoder:
        """Read a ``"dense"`` entry of model.json whose ``spec.rules`` is absent or
        ``"detectron2"``; ``box_means``, ``box_stds`` and ``min_box_size`` (mmdetection's, written
        into older files for every model) are checked and ignored, as they always were.

        Raises:
            ArtifactError: naming the field that is missing, unknown or out of range.
        """
        return cls(Detectron2DenseSpec(**read_dense_spec(data, path, "detectron2", Detectron2DenseSpec)))

    def graph_outputs(self) -> dict[str, Sequence[int] | None]:
        outputs: dict[str, Sequence[int] | None] = {"logits": [self.spec.num_classes], "deltas": [4]}
        if self.spec.kind == "atss":
            outputs["centerness"] = None
        return outputs

    def decode_resized(
        self,
        outputs: RawOutputs,
        padded_hw: tuple[int, int],
        image_sizes: Sequence[tuple[int, int]],
        score_threshold: float | None = None,
    ) -> list[DecodedDetections]:
        """Decode a batch into the resized images' pixels, unclipped (Detectron2's decoder
        output, before ``detector_postprocess``).

        Args:
            outputs: ``logits`` Tensor[N, R, C], ``deltas`` Tensor[N, R, 4] and, for ATSS,
                ``centerness`` Tensor[N, R], as the network returns them.
            padded_hw: (H, W) of the network input.
            image_sizes: (h, w) of each resized image before padding.
            score_threshold: overrides the configured threshold when given.
        """
        anchors = self.anchor_generator.dense_anchors(outputs, padded_hw, self.spec.num_classes)
        counts = [len(a) for a in anchors]
        threshold = self.spec.score_threshold if score_threshold is None else score_threshold
        logits = outputs["logits"].float().split(counts, dim=1)
        deltas = outputs["deltas"].float().split(counts, dim=1)
        ctr = outputs["centerness"].float().split(counts, dim=1) if self.spec.kind == "atss" else None
        results = []
        for i in range(len(image_sizes)):
            boxes_all, scores_all, classes_all = [], [], []
            for level, level_anchors in enumerate(anchors):
                level_ctr = ctr[level][i] if ctr is not None else None
                boxes, scores, classes = self._decode_level(
                    level_anchors, logits[level][i], deltas[level][i], level_ctr, threshold
                )
                boxes_all.append(boxes)
                scores_all.append(scores)
                classes_all.append(classes)
            boxes, scores, classes = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(classes_all)
            keep = batched_nms(boxes, scores, classes, self.spec.nms_threshold)[: self.spec.max_detections]
            results.append(DecodedDetections(boxes[keep], scores[keep], classes[keep]))
        return results

    def _decode_level(
        self, anchors: Tensor, logits: Tensor, deltas: Tensor, centerness: Tensor | None, threshold: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        probs = logits.sigmoid()  # [R_l, C]
        candidates = probs > threshold
        num_topk = min(int(candidates.sum()), self.spec.topk_candidates)
        if centerness is not None:
            # ATSS: the threshold applies to the class probability, the ranking to its product with
            # the centerness.
            probs = probs * centerness.sigmoid()[:, None]
        scores, order = probs[candidates].topk(num_topk)
        anchor_idx, classes = torch.nonzero(candidates)[order].unbind(dim=1)
        boxes = self.box_coder.apply_deltas(deltas[anchor_idx], anchors[anchor_idx])
        return boxes, scores, classes
