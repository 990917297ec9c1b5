"""Detectron2's default training augmentations: ``ResizeShortestEdge`` then ``RandomFlip``.

An augmentation looks at an image and draws a deterministic :class:`Transform` (a resize to a
size, a flip or nothing), which is then applied to the image and to its boxes alike. Random draws
come from a ``numpy.random.RandomState``; by default the global one behind ``np.random.*``, which
is what Detectron2 draws from (so a seeded run draws the same sizes and flips), and which the
data loader reseeds in each worker.

Boxes are ``[K, 4]`` absolute (x1, y1, x2, y2), float64 or int64 as Detectron2 transforms them:
it updates an integer box array in place, so each transform's results are truncated toward zero
(a box of json integers scaled by 5/3 goes from x = 64 to 106, not 106.67).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from dyhead_serve.pipeline.preprocess import resized_shape

__all__ = [
    "Augmentation",
    "HFlipTransform",
    "NoOpTransform",
    "RandomFlip",
    "ResizeShortestEdge",
    "ResizeTransform",
    "Transform",
    "VFlipTransform",
    "apply_augmentations",
    "apply_transforms_to_boxes",
    "build_train_augmentations",
]


class Transform(Protocol):
    """A deterministic change of an image and of the boxes on it."""

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """uint8 [H, W, C] -> the transformed image."""
        ...

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """float64 or int64 [K, 4] (x1, y1, x2, y2) -> the boxes on the transformed image, a new
        array of the same dtype (integer results truncated toward zero)."""
        ...


class Augmentation(Protocol):
    """Draws a :class:`Transform` for one image."""

    def get_transform(self, image: np.ndarray, rng: np.random.RandomState) -> Transform: ...


@dataclass(frozen=True)
class NoOpTransform:
    """Leaves image and boxes unchanged."""

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return image

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        return boxes


@dataclass(frozen=True)
class ResizeTransform:
    """Resize from (h, w) to (new_h, new_w): PIL bilinear on uint8, as Detectron2's."""

    h: int
    w: int
    new_h: int
    new_w: int

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        if image.shape[:2] != (self.h, self.w):
            raise ValueError(f"expected an image of {self.h}x{self.w}, got {image.shape[0]}x{image.shape[1]}")
        resized = Image.fromarray(image).resize((self.new_w, self.new_h), Image.Resampling.BILINEAR)
        return np.asarray(resized)

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        out = np.array(boxes)
        # Assigned rather than multiplied in place: into an integer array the float products
        # are truncated, as in Detectron2's ResizeTransform.apply_coords.
        out[:, 0::2] = out[:, 0::2] * (self.new_w * 1.0 / self.w)
        out[:, 1::2] = out[:, 1::2] * (self.new_h * 1.0 / self.h)
        return out


@dataclass(frozen=True)
class HFlipTransform:
    """Mirror left-right an image ``width`` pixels wide: x -> width - x."""

    width: int

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return np.flip(image, axis=1)

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        out = np.array(boxes)
        out[:, [0, 2]] = self.width - out[:, [2, 0]]
        return out


@dataclass(frozen=True)
class VFlipTransform:
    """Mirror top-bottom an image ``height`` pixels high: y -> height - y."""

    height: int

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return np.flip(image, axis=0)

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        out = np.array(boxes)
        out[:, [1, 3]] = self.height - out[:, [3, 1]]
        return out


class ResizeShortestEdge:
    """Scale the shorter edge to a drawn length, the longer edge to at most ``max_size``.

    Args:
        short_edge_lengths: with ``sample_style="choice"``, the lengths to choose from
            (``INPUT.MIN_SIZE_TRAIN``); with ``"range"``, a (min, max) interval, both included.
        max_size: upper bound of the longer edge (``INPUT.MAX_SIZE_TRAIN``).
        sample_style: ``"choice"`` or ``"range"`` (``INPUT.MIN_SIZE_TRAIN_SAMPLING``).
    """

    def __init__(
        self, short_edge_lengths: Sequence[int], max_size: int, sample_style: str = "choice"
    ) -> None:
        if sample_style not in ("choice", "range"):
            raise ValueError(
                f"INPUT.MIN_SIZE_TRAIN_SAMPLING must be 'choice' or 'range', got {sample_style!r}"
            )
        lengths = [int(v) for v in short_edge_lengths]
        if not lengths:
            raise ValueError("INPUT.MIN_SIZE_TRAIN needs at least one length")
        if sample_style == "range" and len(lengths) != 2:
            raise ValueError(
                "with MIN_SIZE_TRAIN_SAMPLING 'range', INPUT.MIN_SIZE_TRAIN must be (min, max); "
                f"got {tuple(lengths)}"
            )
        self.short_edge_lengths = lengths
        self.max_size = int(max_size)
        self.sample_style = sample_style

    def get_transform(self, image: np.ndarray, rng: np.random.RandomState) -> Transform:
        h, w = image.shape[:2]
        if self.sample_style == "range":
            size = int(rng.randint(self.short_edge_lengths[0], self.short_edge_lengths[1] + 1))
        else:
            size = int(rng.choice(self.short_edge_lengths))
        if size == 0:
            return NoOpTransform()
        new_h, new_w = resized_shape(h, w, size, self.max_size)
        return ResizeTransform(h, w, new_h, new_w)

    def __repr__(self) -> str:
        return (
            f"ResizeShortestEdge({self.short_edge_lengths}, max_size={self.max_size}, {self.sample_style!r})"
        )


class RandomFlip:
    """Flip horizontally (or vertically) with probability ``prob``."""

    def __init__(self, prob: float = 0.5, *, horizontal: bool = True, vertical: bool = False) -> None:
        if horizontal == vertical:
            raise ValueError("RandomFlip flips either horizontally or vertically")
        self.prob = prob
        self.horizontal = horizontal

    def get_transform(self, image: np.ndarray, rng: np.random.RandomState) -> Transform:
        h, w = image.shape[:2]
        if rng.uniform(0.0, 1.0) < self.prob:
            return HFlipTransform(w) if self.horizontal else VFlipTransform(h)
        return NoOpTransform()

    def __repr__(self) -> str:
        return f"RandomFlip(prob={self.prob}, {'horizontal' if self.horizontal else 'vertical'})"


def build_train_augmentations(
    min_size_train: Sequence[int], max_size_train: int, sample_style: str, random_flip: str
) -> list[Augmentation]:
    """Detectron2's ``build_augmentation(cfg, is_train=True)``: resize, then flip unless ``"none"``.

    Args:
        min_size_train, max_size_train, sample_style: ``INPUT.MIN_SIZE_TRAIN``,
            ``INPUT.MAX_SIZE_TRAIN``, ``INPUT.MIN_SIZE_TRAIN_SAMPLING``.
        random_flip: ``INPUT.RANDOM_FLIP``: ``"horizontal"``, ``"vertical"`` or ``"none"``.
    """
    augmentations: list[Augmentation] = [ResizeShortestEdge(min_size_train, max_size_train, sample_style)]
    if random_flip not in ("horizontal", "vertical", "none"):
        raise ValueError(f"INPUT.RANDOM_FLIP must be 'horizontal', 'vertical' or 'none', got {random_flip!r}")
    if random_flip != "none":
        augmentations.append(
            RandomFlip(horizontal=random_flip == "horizontal", vertical=random_flip == "vertical")
        )
    return augmentations


def apply_augmentations(
    augmentations: Sequence[Augmentation], image: np.ndarray, rng: np.random.RandomState | None = None
) -> tuple[np.ndarray, list[Transform]]:
    """Draw and apply each augmentation in turn (each sees the image the previous one made).

    Args:
        augmentations: applied in order.
        image: uint8 [H, W, C].
        rng: where random draws come from; default: the global state behind ``np.random``.

    Returns:
        (the transformed image, the transforms drawn, to apply to the boxes with
        :func:`apply_transforms_to_boxes`).
    """
    state = rng if rng is not None else np.random.mtrand._rand
    transforms: list[Transform] = []
    for augmentation in augmentations:
        transform = augmentation.get_transform(image, state)
        image = transform.apply_image(image)
        transforms.append(transform)
    return image, transforms


def apply_transforms_to_boxes(transforms: Sequence[Transform], boxes: np.ndarray) -> np.ndarray:
    """Apply ``transforms`` in order to [K, 4] boxes.

    Integer boxes stay int64, each transform truncating its results as Detectron2's do on an
    integer array; any other boxes are float64.
    """
    out = np.asarray(boxes)
    out = out.astype(np.int64 if np.issubdtype(out.dtype, np.integer) else np.float64, copy=False)
    out = out.reshape(-1, 4)
    for transform in transforms:
        out = transform.apply_boxes(out)
    return out
