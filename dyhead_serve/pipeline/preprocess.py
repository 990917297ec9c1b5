"""Test-time preprocessing: resize, normalise, pad.

The resize follows either Detectron2's default test transform (``ResizeShortestEdge`` with
Pillow's bilinear filter) or mmdetection's ``Resize(keep_ratio=True)`` (mmcv's rescale rule, with
Pillow or OpenCV as the config names), as :class:`InputSpec` says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from dyhead_serve.artifact_rules import (
    ArtifactError,
    Rule,
    dataclass_record,
    integer,
    list_of,
    number,
    one_of,
)
from dyhead_serve.config.normalisation import normalisation_problem
from dyhead_serve.errors import UserError

__all__ = [
    "INPUT_SPEC_RULES",
    "MAX_IMAGE_SIDE",
    "RESIZE_BACKENDS",
    "RESIZE_RULES",
    "Batch",
    "InputSpec",
    "MissingExtraError",
    "mmdet_rescaled_shape",
    "preprocess",
    "resize_image",
    "resized_shape",
]

RESIZE_RULES = ("detectron2", "mmdet")
RESIZE_BACKENDS = ("pillow", "cv2")

# Largest min_size / max_size (pixels): 4096 is three times Detectron2's 1333 and more than any
# multi-scale test setting; 100000 made one image need 20 GB.
MAX_IMAGE_SIDE = 4096

INPUT_SPEC_RULES: dict[str, Rule] = {
    "channel_order": one_of("BGR", "RGB"),
    "pixel_mean": list_of(number(-1e4, 1e4), min_length=3, max_length=3),
    "pixel_std": list_of(number(0.0, 1e4, above_low=True), min_length=3, max_length=3),
    "min_size": integer(1, MAX_IMAGE_SIDE),
    "max_size": integer(1, MAX_IMAGE_SIDE),
    "size_divisibility": integer(1, 1024),  # TensorRT profiles and the backends divide by it
    # absent in files written before mmdetection's models: Detectron2's resize with Pillow
    "resize_rule": one_of(*RESIZE_RULES),
    "resize_backend": one_of(*RESIZE_BACKENDS),
}
"""One rule per :class:`InputSpec` field, for :meth:`InputSpec.from_dict` (model.json's
``input_spec``)."""


class MissingExtraError(UserError, ValueError):
    """An optional dependency the model needs is not installed; the message names the extra to
    install. A ValueError, as the other "this model cannot be loaded" errors, so every command
    reports it in one line."""


def _cv2() -> Any:
    """OpenCV, imported on first use: only models whose preprocessing names it need it."""
    try:
        import cv2
    except ImportError as exc:
        raise MissingExtraError(
            "this model resizes images with OpenCV, as its mmdetection config says (Resize without "
            "backend='pillow'), and OpenCV is not installed: pip install 'dyhead-serve[mmdet]'"
        ) from exc
    return cv2


@dataclass(frozen=True)
class InputSpec:
    """How raw images become network input; travels with every exported model.

    Attributes:
        channel_order: ``"BGR"`` or ``"RGB"``: channel order the network expects.
        pixel_mean, pixel_std: per channel, in ``channel_order``, on the 0-255 scale.
        min_size: target length of the shorter edge.
        max_size: upper bound of the longer edge.
        size_divisibility: padded height and width are multiples of this.
        resize_rule: ``"detectron2"`` (shorter edge to ``min_size`` unless the longer would
            exceed ``max_size``; :func:`resized_shape`) or ``"mmdet"`` (one scale factor
            ``min(max_size / long, min_size / short)``; :func:`mmdet_rescaled_shape`).
        resize_backend: bilinear resize of ``"pillow"`` or ``"cv2"`` (OpenCV, the extra
            ``dyhead-serve[mmdet]``), on the uint8 image.
    """

    channel_order: str
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]
    min_size: int
    max_size: int
    size_divisibility: int
    resize_rule: str = "detectron2"
    resize_backend: str = "pillow"

    def __post_init__(self) -> None:
        if self.channel_order not in ("BGR", "RGB"):
            raise ValueError(f"channel order must be 'BGR' or 'RGB', got {self.channel_order!r}")
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3:
            raise ValueError("pixel_mean and pixel_std need 3 values")
        problem = normalisation_problem(self.pixel_mean, self.pixel_std)
        if problem is not None:
            raise ValueError(problem)
        if self.resize_rule not in RESIZE_RULES:
            raise ValueError(f"resize rule must be one of {RESIZE_RULES}, got {self.resize_rule!r}")
        if self.resize_backend not in RESIZE_BACKENDS:
            raise ValueError(f"resize backend must be one of {RESIZE_BACKENDS}, got {self.resize_backend!r}")
        if self.resize_backend == "cv2":
            _cv2()  # fail when the model is loaded, not on its first image

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """(new_h, new_w) of an image of ``height`` x ``width`` under this spec's resize rule."""
        if self.resize_rule == "mmdet":
            return mmdet_rescaled_shape(height, width, self.min_size, self.max_size)
        return resized_shape(height, width, self.min_size, self.max_size)

    def to_dict(self) -> dict[str, Any]:
        """The ``input_spec`` object of model.json (lists where the spec holds tuples)."""
        values = asdict(self)
        values["pixel_mean"], values["pixel_std"] = list(self.pixel_mean), list(self.pixel_std)
        return values

    @classmethod
    def from_dict(cls, data: Any, path: str = "input_spec") -> InputSpec:
        """Read and check an ``input_spec`` of model.json (what :meth:`to_dict` writes; files
        written before mmdetection support lack the resize fields and resize as Detectron2 does).

        Args:
            data: the parsed JSON object.
            path: where it sits in the document, for messages.

        Raises:
            ArtifactError (a ValueError): a field missing, unknown, of the wrong type or out of
                range, or ``min_size`` above ``max_size``; the message names the field.
        """
        values = dataclass_record(cls, INPUT_SPEC_RULES)(data, path)
        if values["min_size"] > values["max_size"]:
            raise ArtifactError(
                f"{path}.min_size: {values['min_size']} is larger than {path}.max_size {values['max_size']}"
            )
        values["pixel_mean"] = tuple(values["pixel_mean"])
        values["pixel_std"] = tuple(values["pixel_std"])
        return cls(**values)


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


def mmdet_rescaled_shape(height: int, width: int, short_edge: int, long_edge: int) -> tuple[int, int]:
    """(new_h, new_w) of mmdetection's ``Resize(scale=(long_edge, short_edge), keep_ratio=True)``:
    one factor ``min(long_edge / long side, short_edge / short side)``, each side rounded as
    mmcv's ``rescale_size`` does (``int(side * factor + 0.5)``)."""
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * float(factor) + 0.5), int(width * float(factor) + 0.5)


def resize_image(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Resize an uint8 [H, W, 3] array to ``spec.resized_shape`` with the spec's bilinear
    filter: Pillow's (Detectron2, mmdetection's ``backend='pillow'``) or OpenCV's
    ``INTER_LINEAR`` (mmdetection's default)."""
    new_h, new_w = spec.resized_shape(image.shape[0], image.shape[1])
    if spec.resize_backend == "cv2":
        cv2 = _cv2()
        return np.asarray(cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR))
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
