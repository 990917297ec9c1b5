"""COCO-format instance JSON -> Detectron2-style dataset dicts and their metadata.

A dataset dict describes one image::

    {"file_name": "datasets/coco/val2017/000000000139.jpg", "height": 426, "width": 640,
     "image_id": 139,
     "annotations": [{"bbox": [x1, y1, x2, y2], "category_id": 58, "iscrowd": 0}, ...]}

Boxes are absolute XYXY pixels (COCO's ``[x, y, w, h]`` converted as Detectron2's
``BoxMode.convert`` does it: in float32, or exactly in integers when the json's four values are
all integers) and ``category_id`` is the contiguous class index: the
json's category ids sorted, then numbered 0..K-1, as Detectron2's ``load_coco_json`` maps them.
Images come sorted by id, each image's annotations in file order.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from dyhead_serve.errors import UserError

__all__ = [
    "Annotation",
    "DatasetDict",
    "DatasetError",
    "DatasetMetadata",
    "load_coco_json",
    "read_coco_json",
]

logger = logging.getLogger(__name__)


class DatasetError(UserError, ValueError):
    """A dataset that cannot be used: unknown name, missing file or malformed annotations."""


class Annotation(TypedDict):
    """One object: ``bbox`` absolute (x1, y1, x2, y2), ``category_id`` contiguous, ``iscrowd`` 0/1.

    ``bbox`` holds Python ints when the json gave four integers: Detectron2 then moves the box
    through the augmentations in integer arithmetic (see :mod:`dyhead_serve.data.mapper`).
    """

    bbox: list[float] | list[int]
    category_id: int
    iscrowd: int


class DatasetDict(TypedDict):
    """One image of a dataset and its objects (see the module docstring)."""

    file_name: str
    height: int
    width: int
    image_id: int
    annotations: list[Annotation]


@dataclass(frozen=True)
class DatasetMetadata:
    """What a dataset's dicts do not say: class names, the category id map and where it lives.

    Attributes:
        name: the dataset's name (``coco_2017_val``, ``synthetic_shapes_val``, ...).
        thing_classes: name of each contiguous class index.
        thing_dataset_ids: the json's category id of each contiguous class index (sorted).
        json_file: the COCO json the dicts came from.
        image_root: the folder image ``file_name`` entries are relative to.
    """

    name: str
    thing_classes: tuple[str, ...]
    thing_dataset_ids: tuple[int, ...]
    json_file: str
    image_root: str

    @property
    def thing_dataset_id_to_contiguous_id(self) -> dict[int, int]:
        """Detectron2's map from a json category id to its class index."""
        return {dataset_id: index for index, dataset_id in enumerate(self.thing_dataset_ids)}

    @property
    def num_classes(self) -> int:
        return len(self.thing_classes)


def read_coco_json(json_file: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a COCO json file into a dict, with errors that name the file.

    Raises:
        DatasetError: the file is missing, is not JSON, or lacks ``images`` or ``categories``.
    """
    path = Path(json_file)
    if not path.is_file():
        raise DatasetError(f"COCO annotation file {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not a valid JSON file ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{path}: not a COCO-format file (no 'images' list)")
    if not isinstance(data.get("categories"), list) or not data["categories"]:
        raise DatasetError(f"{path}: a COCO instances file needs a non-empty 'categories' list")
    return data


def xywh_to_xyxy(bbox: Sequence[float]) -> list[float] | list[int]:
    """COCO ``[x, y, w, h]`` -> ``[x1, y1, x2, y2]`` as Detectron2's ``BoxMode.convert`` does for
    a list, through ``torch.tensor(bbox)``: four Python ints stay integers (added exactly, returned
    as ints); anything else is added in float32 (so boxes match Detectron2's to the last bit)."""
    if all(isinstance(v, int) for v in bbox):
        x0, y0, width, height = (int(v) for v in bbox)
        return [x0, y0, x0 + width, y0 + height]
    x, y, w, h = (np.float32(v) for v in bbox)
    return [float(x), float(y), float(x + w), float(y + h)]


def load_coco_json(
    json_file: str | os.PathLike[str], image_root: str | os.PathLike[str], name: str
) -> tuple[list[DatasetDict], DatasetMetadata]:
    """Load a COCO instances json as Detectron2's ``load_coco_json(json, root, name)`` does.

    Args:
        json_file: the COCO-format annotation file.
        image_root: the folder that holds the images; ``file_name`` is joined to it.
        name: the dataset's name, kept in the metadata and used in messages.

    Returns:
        (dicts, metadata): one dict per image (sorted by image id; images without annotations
        included, with an empty list) and the dataset's metadata.

    Raises:
        DatasetError: malformed file: an annotation with an unknown category id, an empty or
            missing bbox, an ``ignore`` flag, an image id that is not in ``images``, or
            duplicate annotation ids (allowed only in the ``minival`` files, as Detectron2 does).
    """
    json_file = os.fspath(json_file)
    data = read_coco_json(json_file)
    categories = sorted(data["categories"], key=lambda c: int(c["id"]))
    dataset_ids = tuple(int(c["id"]) for c in categories)
    if len(set(dataset_ids)) != len(dataset_ids):
        raise DatasetError(f"{json_file}: duplicate category ids in 'categories'")
    id_map = {dataset_id: index for index, dataset_id in enumerate(dataset_ids)}
    if not (min(dataset_ids) == 1 and max(dataset_ids) == len(dataset_ids)) and "coco" not in name:
        logger.warning(
            "%s: category ids are not 1..%d; mapped to contiguous class indices in sorted order",
            json_file,
            len(dataset_ids),
        )
    metadata = DatasetMetadata(
        name=name,
        thing_classes=tuple(str(c["name"]) for c in categories),
        thing_dataset_ids=dataset_ids,
        json_file=json_file,
        image_root=os.fspath(image_root),
    )

    images = {int(image["id"]): image for image in data["images"]}
    annotations_per_image: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for anno in data.get("annotations", []):
        image_id = int(anno["image_id"])
        if image_id not in images:
            raise DatasetError(
                f"{json_file}: annotation {anno.get('id')} names image {image_id}, not in 'images'"
            )
        annotations_per_image[image_id].append(anno)
    if "minival" not in json_file:
        ann_ids = [anno.get("id") for anno in data.get("annotations", [])]
        if len(set(ann_ids)) != len(ann_ids):
            raise DatasetError(f"{json_file}: annotation ids are not unique")

    dicts: list[DatasetDict] = []
    for image_id in sorted(images):
        image = images[image_id]
        objects = [_convert_annotation(anno, id_map, json_file) for anno in annotations_per_image[image_id]]
        dicts.append(
            {
                "file_name": os.path.join(os.fspath(image_root), image["file_name"]),
                "height": int(image["height"]),
                "width": int(image["width"]),
                "image_id": image_id,
                "annotations": objects,
            }
        )
    logger.info("loaded %d images in COCO format from %s", len(dicts), json_file)
    return dicts, metadata


def _convert_annotation(anno: Mapping[str, Any], id_map: dict[int, int], json_file: str) -> Annotation:
    where = f"{json_file}: annotation {anno.get('id')} of image {anno.get('image_id')}"
    if anno.get("ignore", 0) != 0:
        raise DatasetError(f"{where}: the 'ignore' flag is not supported (use 'iscrowd')")
    bbox = anno.get("bbox")
    if (
        not isinstance(bbox, list | tuple)
        or len(bbox) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
    ):
        raise DatasetError(f"{where}: 'bbox' must be [x, y, width, height] numbers, got {bbox!r}")
    category_id = int(anno["category_id"])
    if category_id not in id_map:
        raise DatasetError(f"{where}: category_id {category_id} is not in the file's 'categories'")
    return {
        "bbox": xywh_to_xyxy(bbox),
        "category_id": id_map[category_id],
        "iscrowd": int(anno.get("iscrowd", 0)),
    }
