"""Resize and flip move images and boxes together; the training mapper, worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dyhead_serve.config import get_default_config
from dyhead_serve.data.coco_json import DatasetDict, DatasetError, load_coco_json
from dyhead_serve.data.transforms import (
    HFlipTransform,
    RandomFlip,
    ResizeShortestEdge,
    ResizeTransform,
    VFlipTransform,
    apply_augmentations,
    apply_transforms_to_boxes,
)
from dyhead_serve.training.from_config import dataset_mapper

BOX = np.array([[10.0, 5.0, 30.0, 25.0]])  # on a 100 (w) x 50 (h) image


def test_resize_then_flips_move_a_box_as_worked_out_by_hand() -> None:
    image = np.zeros((50, 100, 3), dtype=np.uint8)
    # shorter edge 50 -> 100: scale 2, image 200 x 100
    resized, (resize,) = apply_augmentations(
        [ResizeShortestEdge([100], 1000)], image, np.random.RandomState(0)
    )
    assert resize == ResizeTransform(50, 100, 100, 200) and resized.shape == (100, 200, 3)
    np.testing.assert_array_equal(apply_transforms_to_boxes([resize], BOX), [[20, 10, 60, 50]])
    # mirrored in a 200-wide image: x -> 200 - x, x1 and x2 swap
    np.testing.assert_array_equal(
        apply_transforms_to_boxes([resize, HFlipTransform(200)], BOX), [[140, 10, 180, 50]]
    )
    # mirrored in a 100-high image: y -> 100 - y
    np.testing.assert_array_equal(
        apply_transforms_to_boxes([resize, VFlipTransform(100)], BOX), [[20, 50, 60, 90]]
    )


def test_longer_edge_is_capped_by_max_size() -> None:
    image = np.zeros((50, 100, 3), dtype=np.uint8)
    # 100 short edge would make 200 wide; capped at 150 -> scale 1.5, 75 x 150
    _, (resize,) = apply_augmentations([ResizeShortestEdge([100], 150)], image, np.random.RandomState(0))
    assert resize == ResizeTransform(50, 100, 75, 150)
    np.testing.assert_allclose(apply_transforms_to_boxes([resize], BOX), [[15, 7.5, 45, 37.5]])


def test_flips_mirror_the_pixels() -> None:
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(HFlipTransform(3).apply_image(image)[:, 0], image[:, 2])
    np.testing.assert_array_equal(VFlipTransform(2).apply_image(image)[0], image[1])


def test_size_sampling_choice_and_range() -> None:
    image = np.zeros((10, 20, 3), dtype=np.uint8)
    rng = np.random.RandomState(0)
    choice = ResizeShortestEdge([4, 6], 1000, "choice")
    drawn = {choice.get_transform(image, rng).new_h for _ in range(50)}  # type: ignore[attr-defined]
    assert drawn == {4, 6}
    ranged = ResizeShortestEdge([4, 6], 1000, "range")
    drawn = {ranged.get_transform(image, rng).new_h for _ in range(50)}  # type: ignore[attr-defined]
    assert drawn == {4, 5, 6}
    with pytest.raises(ValueError, match="range"):
        ResizeShortestEdge([4, 5, 6], 1000, "range")


def test_random_flip_flips_about_half_the_time() -> None:
    image = np.zeros((10, 20, 3), dtype=np.uint8)
    rng = np.random.RandomState(0)
    flip = RandomFlip(0.5, horizontal=True)
    flipped = sum(isinstance(flip.get_transform(image, rng), HFlipTransform) for _ in range(400))
    assert 150 < flipped < 250


def _write_image(path: Path, height: int, width: int) -> np.ndarray:
    rgb = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def _mapper_cfg(min_size: int, max_size: int, flip: str, image_format: str = "BGR"):  # type: ignore[no-untyped-def]
    cfg = get_default_config()
    cfg.merge_from_list(
        [
            "INPUT.MIN_SIZE_TRAIN", f"({min_size},)", "INPUT.MAX_SIZE_TRAIN", str(max_size),
            "INPUT.RANDOM_FLIP", flip, "INPUT.FORMAT", image_format,
        ]
    )  # fmt: skip
    return cfg


def _dataset_dict(path: Path) -> DatasetDict:
    return {
        "file_name": str(path),
        "height": 50,
        "width": 100,
        "image_id": 7,
        "annotations": [
            {"bbox": [10.0, 5.0, 30.0, 25.0], "category_id": 2, "iscrowd": 0},
            {"bbox": [0.0, 0.0, 50.0, 50.0], "category_id": 1, "iscrowd": 1},  # crowd: not a target
            {"bbox": [90.0, 40.0, 110.0, 60.0], "category_id": 0, "iscrowd": 0},  # sticks out: clipped
            {"bbox": [100.0, 0.0, 110.0, 10.0], "category_id": 1, "iscrowd": 0},  # outside: dropped
        ],
    }


def test_mapper_resizes_flips_clips_and_drops_crowd_and_empty_boxes(tmp_path: Path) -> None:
    path = tmp_path / "img.png"
    _write_image(path, 50, 100)
    mapper = dataset_mapper(_mapper_cfg(100, 1000, "horizontal"))
    mapper.augmentations[1] = RandomFlip(1.0, horizontal=True)  # always flip
    sample = mapper(_dataset_dict(path))
    assert sample["image"].shape == (3, 100, 200) and sample["image"].dtype == torch.float32
    assert (sample["height"], sample["width"], sample["image_id"]) == (50, 100, 7)
    # resized x2, mirrored in 200: [10,5,30,25] -> [20,10,60,50] -> [140,10,180,50];
    # [90,40,110,60] -> [180,80,220,120] -> [-20,80,20,120] -> clipped [0,80,20,100];
    # [100,0,110,10] -> [200,0,220,20] -> [-20,0,0,20] -> [0,0,0,20]: empty, dropped
    torch.testing.assert_close(sample["gt_boxes"], torch.tensor([[140.0, 10, 180, 50], [0, 80, 20, 100]]))
    assert sample["gt_classes"].tolist() == [2, 0] and sample["gt_classes"].dtype == torch.int64


def test_integer_json_boxes_are_truncated_by_each_transform_as_in_detectron2(tmp_path: Path) -> None:
    """Detectron2 transforms a box of json integers as an int64 array, updated in place: each
    transform's results are truncated. A box with one float among its values is float64."""
    _write_image(tmp_path / "img.png", 60, 90)
    coco = {
        "images": [{"id": 1, "file_name": "img.png", "height": 60, "width": 90}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 7, 21, 13], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [10.0, 7, 21, 13], "iscrowd": 0},
        ],
    }
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    (dataset_dict,), _ = load_coco_json(tmp_path / "instances.json", tmp_path, "integer_boxes")
    mapper = dataset_mapper(_mapper_cfg(100, 1000, "horizontal"))
    mapper.augmentations[1] = RandomFlip(1.0, horizontal=True)  # always flip
    sample = mapper(dataset_dict)
    # shorter edge 60 -> 100: scale 150/90 = 100/60 = 5/3, image 150 x 100
    assert sample["image"].shape == (3, 100, 150)
    # [10, 7, 21, 13] -> xyxy [10, 7, 31, 20] -> x5/3 [16.67, 11.67, 51.67, 33.33], truncated to
    # [16, 11, 51, 33] -> mirrored in 150: [99, 11, 134, 33]
    assert sample["gt_boxes"][0].tolist() == [99.0, 11.0, 134.0, 33.0]
    # the float box is not truncated: [150 - 51.67, 11.67, 150 - 16.67, 33.33]
    torch.testing.assert_close(
        sample["gt_boxes"][1], torch.tensor([150 - 31 * 5 / 3, 7 * 5 / 3, 150 - 10 * 5 / 3, 20 * 5 / 3])
    )


def test_integer_boxes_stay_integer_through_each_transform() -> None:
    boxes = np.array([[10, 7, 31, 20]])
    resized = apply_transforms_to_boxes([ResizeTransform(60, 90, 100, 150)], boxes)
    assert resized.dtype == np.int64 and resized.tolist() == [[16, 11, 51, 33]]
    # truncated after the first resize, then scaled again: 16 * 2 = 32 (not 33.33)
    twice = apply_transforms_to_boxes(
        [ResizeTransform(60, 90, 100, 150), ResizeTransform(100, 150, 200, 300)], boxes
    )
    assert twice.tolist() == [[32, 22, 102, 66]]
    assert apply_transforms_to_boxes([VFlipTransform(100)], boxes).tolist() == [[10, 80, 31, 93]]
    assert (
        apply_transforms_to_boxes([ResizeTransform(60, 90, 100, 150)], boxes.astype(np.float32)).dtype
        == np.float64
    )


@pytest.mark.parametrize("image_format", ["BGR", "RGB"])
def test_mapper_puts_channels_in_the_configured_order(tmp_path: Path, image_format: str) -> None:
    path = tmp_path / "img.png"
    rgb = _write_image(path, 50, 100)
    # shorter edge already 50: no resize; no flip
    sample = dataset_mapper(_mapper_cfg(50, 1000, "none", image_format))(_dataset_dict(path))
    expected = rgb[:, :, ::-1] if image_format == "BGR" else rgb
    torch.testing.assert_close(sample["image"], torch.from_numpy(expected.transpose(2, 0, 1).copy()).float())


def test_mapper_from_config_follows_input_keys() -> None:
    assert len(dataset_mapper(_mapper_cfg(50, 1000, "none")).augmentations) == 1
    vertical = dataset_mapper(_mapper_cfg(50, 1000, "vertical")).augmentations[1]
    assert isinstance(vertical, RandomFlip) and not vertical.horizontal
    with pytest.raises(ValueError, match="RANDOM_FLIP"):
        dataset_mapper(_mapper_cfg(50, 1000, "diagonal"))
    cfg = _mapper_cfg(50, 1000, "none")
    cfg.INPUT.CROP.ENABLED = True
    with pytest.raises(ValueError, match="CROP"):
        dataset_mapper(cfg)


def test_mapper_refuses_an_image_whose_size_differs_from_the_json(tmp_path: Path) -> None:
    path = tmp_path / "img.png"
    _write_image(path, 40, 100)
    with pytest.raises(DatasetError, match="width/height"):
        dataset_mapper(_mapper_cfg(50, 1000, "none"))(_dataset_dict(path))
