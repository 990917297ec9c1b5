"""Multi-level ROI pooling as Detectron2's ``ROIPooler``: each box is pooled from one pyramid level
chosen by its size (the FPN paper's rule), with ROIAlign."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

__all__ = ["ROIPooler", "assign_boxes_to_levels"]


def assign_boxes_to_levels(
    boxes: Tensor, min_level: int, max_level: int, canonical_box_size: float = 224, canonical_level: int = 4
) -> Tensor:
    """Pyramid level of each box, as an index from ``min_level``.

    A box of side ``sqrt(area) == canonical_box_size`` goes to ``canonical_level``; each doubling
    (halving) of the side moves one level up (down); levels outside ``[min_level, max_level]`` are
    clamped to it.

    Args:
        boxes: Tensor[M, 4] (x0, y0, x1, y1).

    Returns:
        Tensor[M] int64 in ``[0, max_level - min_level]``.
    """
    box_sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    # The 1e-8 keeps log2 finite for empty boxes (padding rows), as Detectron2 does.
    levels = torch.floor(canonical_level + torch.log2(box_sizes / canonical_box_size + 1e-8))
    levels = torch.clamp(levels, min=min_level, max=max_level)
    return levels.to(torch.int64) - min_level


class ROIPooler(nn.Module):
    """ROIAlign from the level :func:`assign_boxes_to_levels` picks for each box.

    Args:
        output_size: side of the pooled square (``POOLER_RESOLUTION``).
        strides: stride of each input level, finest first; consecutive powers of two.
        sampling_ratio: ROIAlign samples per bin side (0: adaptive, ``ceil(bin size)``).
        aligned: ``True`` for Detectron2's ``ROIAlignV2`` (half-pixel shift), ``False`` for
            ``ROIAlign``.
        canonical_box_size: box side that maps to ``canonical_level``.
        canonical_level: level (log2 of the stride) of a canonically sized box.
    """

    def __init__(
        self,
        output_size: int,
        strides: Sequence[int],
        sampling_ratio: int = 0,
        aligned: bool = True,
        canonical_box_size: float = 224,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        levels = [math.log2(s) for s in strides]
        if not levels or any(lv != int(lv) for lv in levels):
            raise ValueError(f"ROI pooler strides must be powers of two, got {list(strides)}")
        if [int(lv) for lv in levels] != list(range(int(levels[0]), int(levels[0]) + len(levels))):
            raise ValueError(f"ROI pooler strides must double from level to level, got {list(strides)}")
        if canonical_box_size <= 0:
            raise ValueError(f"canonical_box_size must be positive, got {canonical_box_size}")
        self.output_size = output_size
        self.scales = [1.0 / s for s in strides]
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.min_level = int(levels[0])
        self.max_level = int(levels[-1])
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level

    def forward(self, features: Sequence[Tensor], boxes: Tensor) -> Tensor:
        """Pool every box of every image.

        Args:
            features: one Tensor[N, C, H_l, W_l] per level, finest first.
            boxes: Tensor[N, R, 4] (x0, y0, x1, y1) in input pixels, R boxes per image.

        Returns:
            Tensor[N * R, C, output_size, output_size], image-major.
        """
        num_images, num_boxes = boxes.shape[:2]
        flat = boxes.reshape(-1, 4)
        image_index = torch.arange(num_images, dtype=flat.dtype, device=flat.device)
        rois = torch.cat([image_index.repeat_interleave(num_boxes)[:, None], flat], dim=1)  # [N*R, 5]
        return self._pool_rois(features, rois)

    def pool_boxes(self, features: Sequence[Tensor], boxes_per_image: Sequence[Tensor]) -> Tensor:
        """Pool a different number of boxes per image (training minibatches).

        Args:
            features: one Tensor[N, C, H_l, W_l] per level, finest first.
            boxes_per_image: N tensors Tensor[R_i, 4] (x0, y0, x1, y1) in input pixels.

        Returns:
            Tensor[sum R_i, C, output_size, output_size], image-major.
        """
        rois = torch.cat(
            [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes_per_image)]
        )  # [sum R_i, 5]
        return self._pool_rois(features, rois)

    def _pool_rois(self, features: Sequence[Tensor], rois: Tensor) -> Tensor:
        """Tensor[M, 5] (image index, x0, y0, x1, y1) -> Tensor[M, C, S, S]."""
        if len(features) != len(self.scales):
            raise ValueError(f"the pooler was built for {len(self.scales)} levels, got {len(features)}")
        if len(features) == 1:
            return self._pool(features[0], rois, self.scales[0])
        levels = assign_boxes_to_levels(
            rois[:, 1:], self.min_level, self.max_level, self.canonical_box_size, self.canonical_level
        )
        channels = features[0].shape[1]
        output = features[0].new_zeros((rois.shape[0], channels, self.output_size, self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            index = torch.nonzero(levels == level).squeeze(1)
            output.index_put_((index,), self._pool(feature, rois[index], scale))
        return output

    def _pool(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        return roi_align(
            feature,
            rois.to(feature.dtype),
            self.output_size,
            spatial_scale=scale,
            sampling_ratio=self.sampling_ratio,
            aligned=self.aligned,
        )
