"""Dataset dict -> training sample, as Detectron2's default ``DatasetMapper(cfg, is_train=True)``.

The image is decoded with :func:`dyhead_serve.pipeline.image_io.read_image` (RGB, EXIF
orientation applied), put in ``INPUT.FORMAT`` channel order, resized and flipped; the non-crowd
boxes follow the same transforms, are clipped to the image, and boxes left empty are dropped.

As in Detectron2's ``transform_instance_annotations``, each box is transformed as
``np.array([bbox])``: a box the json gave as four integers is an integer array there, whose
coordinates each transform truncates (see :mod:`dyhead_serve.data.transforms`); the others are
float64. The iteration-0 losses match Detectron2's only if that truncation is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np
import torch
from torch import Tensor

from dyhead_serve.data.coco_json import Annotation, DatasetDict, DatasetError
from dyhead_serve.data.transforms import (
    Augmentation,
    Transform,
    apply_augmentations,
    apply_transforms_to_boxes,
)
from dyhead_serve.pipeline.image_io import read_image

__all__ = ["DatasetMapper", "TrainingSample", "to_channel_order", "transform_annotation_boxes"]

# Detectron2's Boxes.nonempty threshold: narrower or lower boxes are dropped after clipping.
_EMPTY_BOX_THRESHOLD = 1e-5


class TrainingSample(TypedDict):
    """One mapped training image.

    Attributes:
        image: Tensor[3, H, W] float32, 0..255, not normalised, in ``INPUT.FORMAT`` order, at
            the augmented size.
        height, width: the original image size (as in the dataset dict).
        image_id: the dataset's image id.
        file_name: the image file.
        gt_boxes: Tensor[K, 4] float32, (x1, y1, x2, y2) in augmented-image pixels.
        gt_classes: Tensor[K] int64 contiguous class indices.
    """

    image: Tensor
    height: int
    width: int
    image_id: int
    file_name: str
    gt_boxes: Tensor
    gt_classes: Tensor


def transform_annotation_boxes(
    transforms: Sequence[Transform], annotations: Sequence[Annotation]
) -> np.ndarray:
    """The annotations' boxes after ``transforms``, as Detectron2 transforms them one by one.

    Returns:
        float64 [K, 4] (x1, y1, x2, y2), not clipped. Boxes of Python ints went through the
        transforms as int64 (truncated after each one), the others as float64.
    """
    out = np.zeros((len(annotations), 4), dtype=np.float64)
    integer = [all(isinstance(v, int) for v in anno["bbox"]) for anno in annotations]
    for is_integer, dtype in ((False, np.float64), (True, np.int64)):
        rows = [i for i, flag in enumerate(integer) if flag == is_integer]
        if rows:
            boxes = np.array([annotations[i]["bbox"] for i in rows], dtype=dtype)  # [k, 4]
            out[rows] = apply_transforms_to_boxes(transforms, boxes)
    return out


def to_channel_order(rgb: np.ndarray, image_format: str) -> np.ndarray:
    """An RGB uint8 [H, W, 3] image in ``image_format`` order (``"RGB"`` or ``"BGR"``)."""
    if image_format == "RGB":
        return rgb
    if image_format == "BGR":
        return rgb[:, :, ::-1]
    raise ValueError(f"INPUT.FORMAT must be 'BGR' or 'RGB', got {image_format!r}")


class DatasetMapper:
    """Maps a dataset dict to a :class:`TrainingSample`.

    Args:
        augmentations: applied in order (see :func:`build_train_augmentations`).
        image_format: ``"BGR"`` or ``"RGB"`` (``INPUT.FORMAT``).
        rng: where augmentations draw from; default: the global ``np.random`` state, as in
            Detectron2 (the data loader reseeds it in each worker).
    """

    def __init__(
        self,
        augmentations: Sequence[Augmentation],
        image_format: str,
        rng: np.random.RandomState | None = None,
    ) -> None:
        if image_format not in ("BGR", "RGB"):
            raise ValueError(f"INPUT.FORMAT must be 'BGR' or 'RGB', got {image_format!r}")
        self.augmentations = list(augmentations)
        self.image_format = image_format
        self.rng = rng

    def __call__(self, dataset_dict: DatasetDict) -> TrainingSample:
        """Read, augment and convert one image and its objects.

        Raises:
            FileNotFoundError, ImageDecodeError: the image cannot be read.
            DatasetError: the image's size differs from the dataset dict's.
        """
        rgb = read_image(dataset_dict["file_name"])
        expected = (dataset_dict["height"], dataset_dict["width"])
        if rgb.shape[:2] != expected:
            raise DatasetError(
                f"{dataset_dict['file_name']}: the image is {rgb.shape[1]}x{rgb.shape[0]} (w x h), but "
                f"its annotations say {expected[1]}x{expected[0]}; check width/height in the json"
            )
        image, transforms = apply_augmentations(
            self.augmentations, to_channel_order(rgb, self.image_format), self.rng
        )
        height, width = image.shape[:2]

        objects = [anno for anno in dataset_dict["annotations"] if anno["iscrowd"] == 0]
        boxes = transform_annotation_boxes(transforms, objects)  # [K, 4]
        boxes = np.minimum(boxes.clip(min=0), [width, height, width, height])
        gt_boxes = torch.as_tensor(boxes, dtype=torch.float32)  # [K, 4]
        gt_classes = torch.tensor([anno["category_id"] for anno in objects], dtype=torch.int64)  # [K]
        sizes = gt_boxes[:, 2:] - gt_boxes[:, :2]
        keep = (sizes > _EMPTY_BOX_THRESHOLD).all(dim=1)

        chw = np.ascontiguousarray(image.transpose(2, 0, 1))
        return {
            "image": torch.from_numpy(chw).to(torch.float32),
            "height": dataset_dict["height"],
            "width": dataset_dict["width"],
            "image_id": dataset_dict["image_id"],
            "file_name": dataset_dict["file_name"],
            "gt_boxes": gt_boxes[keep],
            "gt_classes": gt_classes[keep],
        }
