"""Training samples -> the network's input batch and the ground truth the losses need."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dyhead_serve.data.mapper import TrainingSample

__all__ = ["TrainBatch", "collate_training_batch"]


@dataclass
class TrainBatch:
    """One training batch on the model's device.

    Attributes:
        images: Tensor[N, 3, H, W] normalised, zero-padded to the size divisibility.
        image_sizes: (h, w) of each image before padding.
        gt_boxes: per image Tensor[K_i, 4] (x0, y0, x1, y1) in image pixels.
        gt_classes: per image Tensor[K_i] int64 class indices.
    """

    images: Tensor
    image_sizes: list[tuple[int, int]]
    gt_boxes: list[Tensor]
    gt_classes: list[Tensor]

    @property
    def padded_hw(self) -> tuple[int, int]:
        return int(self.images.shape[-2]), int(self.images.shape[-1])


def collate_training_batch(
    samples: Sequence[TrainingSample],
    pixel_mean: Sequence[float],
    pixel_std: Sequence[float],
    size_divisibility: int,
    device: torch.device,
) -> TrainBatch:
    """Normalise ``(image - mean) / std`` and pad every image to the batch's largest height and
    width, rounded up to ``size_divisibility``, as Detectron2's ``ImageList.from_tensors``.

    Raises:
        ValueError: an empty batch, or an image that is not Tensor[3, H, W].
    """
    if not samples:
        raise ValueError("a training batch needs at least one sample")
    mean = torch.tensor(pixel_mean, dtype=torch.float32, device=device).view(-1, 1, 1)
    std = torch.tensor(pixel_std, dtype=torch.float32, device=device).view(-1, 1, 1)
    images = []
    for sample in samples:
        image = sample["image"]
        if image.dim() != 3 or image.shape[0] != mean.shape[0]:
            raise ValueError(f"expected a [{mean.shape[0]}, H, W] image, got {tuple(image.shape)}")
        images.append((image.to(device=device, dtype=torch.float32) - mean) / std)
    image_sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    div = max(size_divisibility, 1)
    height = -(-max(h for h, _ in image_sizes) // div) * div
    width = -(-max(w for _, w in image_sizes) // div) * div
    padded = torch.stack(
        [F.pad(im, [0, width - im.shape[2], 0, height - im.shape[1]], value=0.0) for im in images]
    )
    return TrainBatch(
        images=padded,
        image_sizes=image_sizes,
        gt_boxes=[s["gt_boxes"].to(device=device, dtype=torch.float32) for s in samples],
        gt_classes=[s["gt_classes"].to(device=device, dtype=torch.int64) for s in samples],
    )
