"""Inference post-processing of dense (anchor-based, one-stage) detectors.

It works on the flattened raw outputs every backend returns (torch, ONNX Runtime, TensorRT),
so one implementation decides the detections whichever backend ran the network. Two sets of
rules, chosen by :attr:`DenseDecoderSpec.rules`, reproduce the two implementations whose
checkpoints we run: Detectron2's (the official DyHead code) and mmdetection 3.x's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from dyhead_serve.decode.anchors import AnchorGenerator
from dyhead_serve.decode.box_coding import BoxCoder, decode_delta_xywh
from dyhead_serve.decode.class_offset_nms import batched_nms_class_offset
from dyhead_serve.decode.raw_outputs import check_output_dim

__all__ = ["DECODER_RULES", "DENSE_DECODER_KINDS", "DenseDecoder", "DenseDecoderSpec", "RawDetections"]

DENSE_DECODER_KINDS = ("atss", "retinanet")
DECODER_RULES = ("detectron2", "mmdet")


@dataclass
class RawDetections:
    """Detections of one image in the coordinates of the network input (resized, unpadded), or
    already in original-image pixels when ``in_original_image`` (mmdetection's rules map boxes
    back before NMS)."""

    boxes: Tensor  # [K, 4] (x0, y0, x1, y1)
    scores: Tensor  # [K]
    classes: Tensor  # [K] int64
    in_original_image: bool = False


@dataclass
class DenseDecoderSpec:
    """Everything the decoder needs; plain data, so it travels with exported models.

    ``kind`` is ``"atss"`` (class score times centerness, threshold before the product) or
    ``"retinanet"`` (class score alone).

    ``rules`` is ``"detectron2"`` (the official DyHead code): per level, keep class
    probabilities above ``score_threshold``, rank them by probability times centerness and keep
    ``topk_candidates``; decode with ``box_weights``; class-wise NMS in input coordinates (the
    pipeline then rescales and clips). Or ``"mmdet"`` (``ATSSHead.predict_by_feat`` of
    mmdetection 3.x): per level, keep probabilities above the threshold and the
    ``topk_candidates`` highest probabilities; decode as ``DeltaXYWHBBoxCoder`` with
    ``box_means`` / ``box_stds`` and clip to the resized image; map the boxes back to the
    original image (multiplying by ``1 / scale`` per axis); score = probability times
    centerness; drop boxes not wider and taller than ``min_box_size`` (when >= 0); class-aware
    NMS by coordinate offsets as mmcv computes it; keep ``max_detections``.
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
    rules: str = "detectron2"
    box_means: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    box_stds: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    min_box_size: float = -1.0

    def __post_init__(self) -> None:
        if self.kind not in DENSE_DECODER_KINDS:
            raise ValueError(f"unknown dense decoder kind {self.kind!r}")
        if self.rules not in DECODER_RULES:
            raise ValueError(f"unknown dense decoder rules {self.rules!r}; expected one of {DECODER_RULES}")
        if self.rules == "mmdet" and self.kind != "atss":
            raise ValueError("the mmdet decoder rules are implemented for ATSS heads only")
        if len(self.box_means) != 4 or len(self.box_stds) != 4:
            raise ValueError("box_means and box_stds need 4 values each")


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
        original_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[RawDetections]:
        """Decode a batch.

        Args:
            outputs: ``logits`` Tensor[N, R, C], ``deltas`` Tensor[N, R, 4] and, for ATSS,
                ``centerness`` Tensor[N, R], as the network returns them.
            padded_hw: (H, W) of the network input.
            image_sizes: (h, w) of each resized image before padding.
            score_threshold: overrides the configured threshold when given.
            original_sizes: (h, w) of each image before resizing; needed by the mmdet rules,
                which return detections in original-image pixels.
        """
        check_output_dim(outputs, "logits", -1, self.spec.num_classes, "class scores")
        grid = self.grid_sizes(padded_hw)
        anchors = self.anchor_generator.grid_anchors(grid, device=outputs["logits"].device)
        counts = [len(a) for a in anchors]
        check_output_dim(outputs, "logits", 1, sum(counts), f"anchors for a {padded_hw} input")
        threshold = self.spec.score_threshold if score_threshold is None else score_threshold
        if self.spec.rules == "mmdet":
            if original_sizes is None or len(original_sizes) != len(image_sizes):
                raise ValueError("the mmdet decoder rules need the original size of every image")
            return [
                self._decode_image_mmdet(
                    outputs, i, anchors, counts, threshold, image_sizes[i], original_sizes[i]
                )
                for i in range(len(image_sizes))
            ]
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

    def _decode_image_mmdet(
        self,
        outputs: dict[str, Tensor],
        index: int,
        anchors: list[Tensor],
        counts: list[int],
        threshold: float,
        image_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> RawDetections:
        """mmdetection 3.x's ``_predict_by_feat_single`` + ``_bbox_post_process`` for one image."""
        spec = self.spec
        logits = outputs["logits"][index].float().split(counts)
        deltas = outputs["deltas"][index].float().split(counts)
        ctr = outputs["centerness"][index].float().split(counts)
        kept_deltas, kept_anchors, kept_scores, kept_classes, kept_ctr = [], [], [], [], []
        for level, level_anchors in enumerate(anchors):
            probs = logits[level].sigmoid()  # [R_l, C]
            candidates = probs > threshold
            scores = probs[candidates]
            positions = torch.nonzero(candidates)  # (anchor, class), row-major
            scores, order = scores.sort(descending=True)
            num_topk = min(spec.topk_candidates, positions.shape[0])
            anchor_idx, classes = positions[order[:num_topk]].unbind(dim=1)
            kept_scores.append(scores[:num_topk])
            kept_classes.append(classes)
            kept_deltas.append(deltas[level][anchor_idx])
            kept_anchors.append(level_anchors[anchor_idx])
            kept_ctr.append(ctr[level].sigmoid()[anchor_idx])
        boxes = decode_delta_xywh(
            torch.cat(kept_deltas), torch.cat(kept_anchors), spec.box_means, spec.box_stds, image_size
        )
        # mmdet's Resize records scale_factor = (new_w / w, new_h / h); boxes are multiplied by
        # its inverse, computed in float64 and stored as float32.
        w_scale = image_size[1] / original_size[1]
        h_scale = image_size[0] / original_size[0]
        boxes = boxes * boxes.new_tensor([1 / w_scale, 1 / h_scale]).repeat((1, 2))
        scores = torch.cat(kept_scores) * torch.cat(kept_ctr)
        classes = torch.cat(kept_classes)
        if spec.min_box_size >= 0:
            valid = (boxes[:, 2] - boxes[:, 0] > spec.min_box_size) & (
                boxes[:, 3] - boxes[:, 1] > spec.min_box_size
            )
            if not bool(valid.all()):
                boxes, scores, classes = boxes[valid], scores[valid], classes[valid]
        keep = batched_nms_class_offset(boxes, scores, classes, spec.nms_threshold)[: spec.max_detections]
        return RawDetections(boxes[keep], scores[keep], classes[keep], in_original_image=True)
