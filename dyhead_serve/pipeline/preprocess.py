"""Detectron2's default test-time preprocessing: resize the shortest edge, normalise, pad."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

__all__ = ["Batch", "InputSpec", "preprocess", "resize_image", "resized_shape"]


@dataclass(frozen=True)
class InputSpec:
    """How raw images become network input; travels with every exported model.

    Attributes:
        channel_order: ``"BGR"`` or ``"RGB"``: channel order the network expects.
        pixel_mean, pixel_std: per channel, in ``channel_order``, on the 0-255 scale.
        min_size: target length of the shorter edge.
        max_size: upper bound of the longer edge.
        size_divisibility: padded height and width are multiples of this.
    """

    channel_order: str
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]
    min_size: int
    max_size: int
    size_divisibility: int

    def __post_init__(self) -> None:
        if self.channel_order not in ("BGR", "RGB"):
            raise ValueError(f"channel order must be 'BGR' or 'RGB', got {self.channel_order!r}")
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3:
            raise ValueError("pixel_mean and pixel_std need 3 values")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        return cls(
            channel_order=str(data["channel_order"]),
            pixel_mean=tuple(float(v) for v in data["pixel_mean"]),
            pixel_std=tuple(float(v) for v in data["pixel_std"]),
            min_size=int(data["min_size"]),
            max_size=int(data["max_size"]),
            size_divisibility=int(data["size_divisibility"]),
        )


def resized_shape(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """(new_h, new_w) of Detectron2's ``ResizeShortestEdge``, rounding as it does."""
    scale = short_edge * 1.0 / min(height, width)
    if height < width:
        new_h, new_w = short_edge * 1.0, scale * width
    else:
        new_h, new_w = scale * height, short_edge * 1.0
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_image(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Resize an uint8 [H, W, 3] array with PIL's bilinear filter, as Detectron2 does."""
    new_h, new_w = resized_shape(image.shape[0], image.shape[1], spec.min_size, spec.max_size)
    resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR)
    return np.asarray(resized)


@dataclass
class Batch:
    """A padded network input and what is needed to map detections back.

    Attributes:
        images: Tensor[N, 3, H, W], normalised, zero-padded to the size divisibility.
        image_sizes: (h, w) of each resized image before padding.
        original_sizes: (h, w) of each image as given.
    """

    images: Tensor
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]

    @property
    def padded_hw(self) -> tuple[int, int]:
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    def image_sizes_tensor(self) -> Tensor:
        """Tensor[N, 2] int64 of (h, w) before padding, on the images' device."""
        return torch.tensor(self.image_sizes, dtype=torch.int64, device=self.images.device)


def preprocess(images: Sequence[np.ndarray], spec: InputSpec, device: str | torch.device = "cpu") -> Batch:
    """RGB uint8 images [H, W, 3] -> a normalised, padded batch in the network's channel order."""
    if not images:
        raise ValueError("preprocess needs at least one image")
    mean = torch.tensor(spec.pixel_mean, dtype=torch.float32, device=device).view(-1, 1, 1)
    std = torch.tensor(spec.pixel_std, dtype=torch.float32, device=device).view(-1, 1, 1)
    tensors, image_sizes, original_sizes = [], [], []
    for image in images:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 array [H, W, 3], got {image.dtype} {image.shape}")
        original_sizes.append((int(image.shape[0]), int(image.shape[1])))
        resized = resize_image(image, spec)
        if spec.channel_order == "BGR":
            resized = resized[:, :, ::-1]
        chw = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)), dtype=torch.float32)
        tensors.append((chw.to(device) - mean) / std)
        image_sizes.append((int(resized.shape[0]), int(resized.shape[1])))
    div = max(spec.size_divisibility, 1)
    pad_h = -(-max(h for h, _ in image_sizes) // div) * div
    pad_w = -(-max(w for _, w in image_sizes) // div) * div
    batch = torch.stack(
        [F.pad(t, [0, pad_w - t.shape[-1], 0, pad_h - t.shape[-2]], value=0.0) for t in tensors]
    )
    return Batch(batch, image_sizes, original_sizes)
