"""Inference post-processing of ATSS heads as mmdetection 3.x does it (``ATSSHead.predict_by_feat``
with ``_bbox_post_process``), for mmdetection's DyHead checkpoints.

Like :mod:`dyhead_serve.decode.detectron2_dense`, it works on the raw outputs every backend
returns. The steps differ from Detectron2's in ways that change which boxes survive, so they are
reproduced step for step (see :class:`MMDetATSSDecoder`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from dyhead_serve.artifact_rules import ArtifactError
from dyhead_serve.decode.anchors import AnchorGenerator
from dyhead_serve.decode.base import DecodedDetections
from dyhead_serve.decode.box_coding import decode_delta_xywh
from dyhead_serve.decode.class_offset_nms import batched_nms_class_offset
from dyhead_serve.decode.dense_format import DENSE_TYPE, read_dense_spec
from dyhead_serve.decode.raw_outputs import RawOutputs

__all__ = ["MMDetATSSDecoder", "MMDetATSSSpec"]


@dataclass
class MMDetATSSSpec:
    """Everything the decoder needs; plain data, so it travels with exported models.

    ``box_means`` / ``box_stds`` are the ``DeltaXYWHBBoxCoder``'s ``target_means`` /
    ``target_stds``; ``min_box_size`` is the test config's ``min_bbox_size`` (boxes not wider and
    taller than it are dropped; negative: no filter).
    """

    strides: list[int]
    anchor_sizes: list[list[float]]
    anchor_aspect_ratios: list[list[float]]
    anchor_offset: float
    score_threshold: float
    topk_candidates: int
    nms_threshold: float
    max_detections: int
    num_classes: int
    box_means: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    box_stds: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    min_box_size: float = -1.0

    def __post_init__(self) -> None:
        if len(self.box_means) != 4 or len(self.box_stds) != 4:
            raise ValueError("box_means and box_stds need 4 values each")


class MMDetATSSDecoder:
    """mmdetection 3.x's ATSS inference: per level, keep probabilities above the threshold and
    the ``topk_candidates`` highest probabilities; decode as ``DeltaXYWHBBoxCoder`` with
    ``box_means`` / ``box_stds`` and clip to the resized image; map the boxes back to the original
    image (multiplying by ``1 / scale`` per axis); score = probability times centerness; drop
    boxes not wider and taller than ``min_box_size`` (when >= 0); class-aware NMS by coordinate
    offsets as mmcv computes it; keep ``max_detections``. The boxes are in original-image pixels
    from before NMS on and are neither clipped to the original image nor filtered afterwards, as
    mmdetection leaves them.
    """

    def __init__(self, spec: MMDetATSSSpec) -> None:
        self.spec = spec
        # model.json may give one anchor entry for every level
        self.anchor_generator = AnchorGenerator.per_level(
            spec.strides, spec.anchor_sizes, spec.anchor_aspect_ratios, spec.anchor_offset
        )

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def to_dict(self) -> dict[str, Any]:
        """``{"type": "dense", "spec": {"kind": "atss", "rules": "mmdet", ...}}``."""
        return {"type": DENSE_TYPE, "spec": {"kind": "atss", "rules": "mmdet", **asdict(self.spec)}}

    @classmethod
    def from_dict(cls, data: Any, path: str = "decoder") -> MMDetATSSDecoder:
        """Read a ``"dense"`` entry of model.json whose ``spec.rules`` is ``"mmdet"``; its
        ``kind`` must be ``"atss"``; ``box_weights`` (Detectron2's, written into older files for
        every model) is checked and ignored, as it always was.

        Raises:
            ArtifactError: naming the field that is missing, unknown, out of range or wrong.
        """
        fields = read_dense_spec(data, path, "mmdet", MMDetATSSSpec)
        kind = data["spec"]["kind"]
        if kind != "atss":
            raise ArtifactError(f"{path}.spec.rules: the mmdet rules decode ATSS heads only, not {kind!r}")
        return cls(MMDetATSSSpec(**fields))

    def graph_outputs(self) -> dict[str, Sequence[int] | None]:
        return {"logits": [self.spec.num_classes], "deltas": [4], "centerness": None}

    def __call__(
        self,
        outputs: RawOutputs,
        padded_hw: tuple[int, int],
        image_sizes: Sequence[tuple[int, int]],
        original_sizes: Sequence[tuple[int, int]],
        *,
        score_threshold: float | None = None,
    ) -> list[DecodedDetections]:
        """Decode a batch into original-image pixels.

        Args:
            outputs: ``logits`` Tensor[N, R, C], ``deltas`` Tensor[N, R, 4] and ``centerness``
                Tensor[N, R], as the network returns them.
            padded_hw: (H, W) of the network input.
            image_sizes: (h, w) of each resized image before padding; boxes are clipped to it.
            original_sizes: (h, w) of each image before resizing.
            score_threshold: overrides the configured threshold when given.
        """
        anchors = self.anchor_generator.dense_anchors(outputs, padded_hw, self.spec.num_classes)
        counts = [len(a) for a in anchors]
        threshold = self.spec.score_threshold if score_threshold is None else score_threshold
        if len(original_sizes) != len(image_sizes):
            raise ValueError("the mmdet decoder rules need the original size of every image")
        return [
            self._decode_image(outputs, i, anchors, counts, threshold, image_sizes[i], original_sizes[i])
            for i in range(len(image_sizes))
        ]

    def _decode_image(
        self,
        outputs: RawOutputs,
        index: int,
        anchors: list[Tensor],
        counts: list[int],
        threshold: float,
        image_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> DecodedDetections:
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
        return DecodedDetections(boxes[keep], scores[keep], classes[keep])
