"""Anchor generation as Detectron2's ``DefaultAnchorGenerator`` does it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from dyhead_serve.decode.raw_outputs import RawOutputs, check_output_dim

__all__ = ["AnchorGenerator", "broadcast_per_level", "cell_anchors"]


def broadcast_per_level(params: Sequence, num_levels: int, name: str) -> list[list[float]]:
    """Detectron2's rule: a flat list applies to every level; a list of lists gives one per level
    (a single inner list is repeated)."""
    if not isinstance(params, Sequence) or len(params) == 0:
        raise ValueError(f"ANCHOR_GENERATOR.{name} must be a non-empty list, got {params!r}")
    if not isinstance(params[0], Sequence):
        return [list(map(float, params))] * num_levels
    if len(params) == 1:
        return [list(map(float, params[0]))] * num_levels
    if len(params) != num_levels:
        raise ValueError(
            f"ANCHOR_GENERATOR.{name} has {len(params)} entries but the head uses {num_levels} levels"
        )
    return [list(map(float, p)) for p in params]


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """Anchors centred on (0, 0): Tensor[len(sizes) * len(aspect_ratios), 4] as (x0, y0, x1, y1).

    Sizes vary slowest; ``aspect_ratio = height / width`` and ``width * height = size ** 2``.
    """
    anchors = []
    for size in sizes:
        area = size**2.0
        for ratio in aspect_ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors)


class AnchorGenerator:
    """Anchors for every position of every level.

    Args:
        strides: stride of each level.
        sizes: anchor sizes of each level.
        aspect_ratios: aspect ratios of each level.
        offset: anchor centres sit at ``(i + offset) * stride``.
    """

    def __init__(
        self,
        strides: Sequence[int],
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[Sequence[float]],
        offset: float = 0.0,
    ) -> None:
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"anchor offset must be in [0, 1), got {offset}")
        if not len(strides) == len(sizes) == len(aspect_ratios):
            raise ValueError("strides, sizes and aspect_ratios need one entry per level")
        self.strides = list(strides)
        self.offset = offset
        self.cell_anchors = [cell_anchors(s, a) for s, a in zip(sizes, aspect_ratios, strict=True)]

    @classmethod
    def per_level(
        cls,
        strides: Sequence[int],
        sizes: Sequence,
        aspect_ratios: Sequence,
        offset: float = 0.0,
    ) -> AnchorGenerator:
        """The generator of ``strides``, with ``sizes`` and ``aspect_ratios`` given as Detectron2
        does (a flat list or a single entry serves every level; see :func:`broadcast_per_level`)."""
        levels = len(strides)
        return cls(
            strides,
            broadcast_per_level(sizes, levels, "SIZES"),
            broadcast_per_level(aspect_ratios, levels, "ASPECT_RATIOS"),
            offset,
        )

    @property
    def num_anchors_per_location(self) -> list[int]:
        return [len(c) for c in self.cell_anchors]

    def grid_sizes(self, padded_hw: tuple[int, int]) -> list[tuple[int, int]]:
        """Feature-map size (H_l, W_l) of each level for a padded input of ``padded_hw``."""
        h, w = padded_hw
        return [(-(-h // s), -(-w // s)) for s in self.strides]

    def grid_anchors(
        self, grid_sizes: Sequence[tuple[int, int]], device: torch.device | None = None
    ) -> list[Tensor]:
        """Tensor[H_l * W_l * A_l, 4] per level, ordered (y, x, anchor)."""
        anchors = []
        for (height, width), stride, base in zip(grid_sizes, self.strides, self.cell_anchors, strict=True):
            shift_x = torch.arange(
                self.offset * stride, width * stride, step=stride, dtype=torch.float32, device=device
            )
            shift_y = torch.arange(
                self.offset * stride, height * stride, step=stride, dtype=torch.float32, device=device
            )
            shift_y, shift_x = torch.meshgrid(shift_y, shift_x, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            anchors.append((shifts.view(-1, 1, 4) + base.to(device).view(1, -1, 4)).reshape(-1, 4))
        return anchors

    def dense_anchors(
        self, outputs: RawOutputs, padded_hw: tuple[int, int], num_classes: int
    ) -> list[Tensor]:
        """The anchors of every level for a dense head's raw outputs on a ``padded_hw`` input,
        once ``logits`` is checked to hold ``num_classes`` scores for each of them."""
        check_output_dim(outputs, "logits", -1, num_classes, "class scores")
        grid = self.grid_sizes(padded_hw)
        anchors = self.grid_anchors(grid, device=outputs["logits"].device)
        count = sum(len(a) for a in anchors)
        check_output_dim(outputs, "logits", 1, count, f"anchors for a {padded_hw} input")
        return anchors
