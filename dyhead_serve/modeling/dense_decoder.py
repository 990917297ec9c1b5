"""Inference post-processing of dense (anchor-based, one-stage) detectors.

It works on the flattened raw outputs every backend returns (torch, ONNX Runtime, TensorRT),
so one implementation decides the detections whichever backend ran the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from dyhead_serve.modeling.anchors import AnchorGenerator
from dyhead_serve.modeling.box_coding import BoxCoder
from dyhead_serve.modeling.output_shape import check_output_dim

__all__ = ["DENSE_DECODER_KINDS", "DenseDecoder", "DenseDecoderSpec", "RawDetections"]

DENSE_DECODER_KINDS = ("atss", "retinanet")


@dataclass
class RawDetections:
    """Detections of one image in the coordinates of the network input (resized, unpadded)."""

    boxes: Tensor  # [K, 4] (x0, y0, x1, y1)
    scores: Tensor  # [K]
    classes: Tensor  # [K] int64


@dataclass
class DenseDecoderSpec:
    """Everything the decoder needs; plain data, so it travels with exported models.

    ``kind`` is ``"atss"`` (class score times centerness, threshold before the product) or
    ``"retinanet"`` (class score alone).
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
        if self.kind not in DENSE_DECODER_KINDS:
            raise ValueError(f"unknown dense decoder kind {self.kind!r}")


class DenseDecoder:
    """Per-level score threshold and top-k, box decoding, class-wise NMS, top detections."""

    def __init__(self, spec: DenseDecoderSpec) -> None:
        self.spec = spec
        self.anchor_generator = AnchorGenerator(
            spec.strides, spec.anchor_sizes, spec.anchor_aspect_ratios, spec.anchor_offset
        )
        self.box_coder = BoxCoder(spec.box_weights)

    def grid_sizes(self, padded_hw: tuple[int, int]) -> list[tuple[int, int]]:
        """Feature-map size of each level for a padded input of ``padded_hw``."""
        h, w = padded_hw
        return [(-(-h // s), -(-w // s)) for s in self.spec.strides]

    def __call__(
        self,
        outputs: dict[str, Tensor],
        padded_hw: tuple[int, int],
        image_sizes: Sequence[tuple[int, int]],
        score_threshold: float | None = None,
    ) -> list[RawDetections]:
        """Decode a batch.

        Args:
            outputs: ``logits`` Tensor[N, R, C], ``deltas`` Tensor[N, R, 4] and, for ATSS,
                ``centerness`` Tensor[N, R], as the network returns them.
            padded_hw: (H, W) of the network input.
            image_sizes: (h, w) of each resized image before padding.
            score_threshold: overrides the configured threshold when given.
        """
        check_output_dim(outputs, "logits", -1, self.spec.num_classes, "class scores")
        grid = self.grid_sizes(padded_hw)
        anchors = self.anchor_generator.grid_anchors(grid, device=outputs["logits"].device)
        counts = [len(a) for a in anchors]
        check_output_dim(outputs, "logits", 1, sum(counts), f"anchors for a {padded_hw} input")
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
            results.append(RawDetections(boxes[keep], scores[keep], classes[keep]))
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
