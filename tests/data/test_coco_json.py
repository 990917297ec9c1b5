"""COCO json -> dataset dicts, contiguous class ids, training filters, the dataset catalog."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dyhead_serve.data.catalog import (
    DatasetCatalog,
    filter_images_with_only_crowd_annotations,
    get_detection_dataset_dicts,
)
from dyhead_serve.data.coco_json import DatasetError, load_coco_json


def tiny_coco(**changes: Any) -> dict[str, Any]:
    """Three images: id 2 has a box and a crowd box, id 5 only a crowd box, id 9 nothing.
    Category ids have gaps and are listed out of order."""
    data: dict[str, Any] = {
        "images": [
            {"id": 9, "file_name": "c.png", "height": 12, "width": 16},
            {"id": 2, "file_name": "a.png", "height": 10, "width": 20},
            {"id": 5, "file_name": "sub/b.png", "height": 30, "width": 40},
        ],
        "annotations": [
            {"id": 1, "image_id": 2, "category_id": 7, "bbox": [1, 2, 3, 4], "iscrowd": 0, "area": 12},
            {"id": 2, "image_id": 2, "category_id": 12, "bbox": [0, 0, 5, 5], "iscrowd": 1, "area": 25},
            {"id": 3, "image_id": 5, "category_id": 3, "bbox": [10.5, 0, 4, 8], "iscrowd": 1, "area": 32},
        ],
        "categories": [
            {"id": 12, "name": "zebra"},
            {"id": 3, "name": "apple"},
            {"id": 7, "name": "kite"},
        ],
    }
    data.update(changes)
    return data


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_dicts_are_sorted_by_image_id_with_xyxy_boxes_and_contiguous_ids(tmp_path: Path) -> None:
    dicts, meta = load_coco_json(write_json(tmp_path / "t.json", tiny_coco()), tmp_path / "img", "tiny")
    assert [d["image_id"] for d in dicts] == [2, 5, 9]
    assert dicts[0]["file_name"] == str(tmp_path / "img" / "a.png")
    assert dicts[1]["file_name"] == str(tmp_path / "img" / "sub" / "b.png")
    assert (dicts[0]["height"], dicts[0]["width"]) == (10, 20)
    # sorted ids 3, 7, 12 -> 0, 1, 2
    assert meta.thing_classes == ("apple", "kite", "zebra")
    assert meta.thing_dataset_ids == (3, 7, 12)
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1, 12: 2}
    assert dicts[0]["annotations"] == [
        {"bbox": [1.0, 2.0, 4.0, 6.0], "category_id": 1, "iscrowd": 0},
        {"bbox": [0.0, 0.0, 5.0, 5.0], "category_id": 2, "iscrowd": 1},
    ]
    assert dicts[1]["annotations"] == [{"bbox": [10.5, 0.0, 14.5, 8.0], "category_id": 0, "iscrowd": 1}]
    assert dicts[2]["annotations"] == []


def test_xyxy_conversion_adds_in_float32_as_detectron2(tmp_path: Path) -> None:
    data = tiny_coco(annotations=[{"id": 1, "image_id": 2, "category_id": 3, "bbox": [0.1, 0.2, 0.7, 0.3]}])
    dicts, _ = load_coco_json(write_json(tmp_path / "t.json", data), tmp_path, "tiny")
    # float32(0.1) + float32(0.7), not the float64 sum 0.7999999999999999
    assert dicts[0]["annotations"][0]["bbox"][2] == pytest.approx(0.800000011920929, abs=0)


def test_integer_boxes_stay_integers_as_detectron2_keeps_them(tmp_path: Path) -> None:
    # BoxMode.convert goes through torch.tensor(bbox): four ints add as int64, one float makes
    # the whole box float32.
    annotations = [
        {"id": 1, "image_id": 2, "category_id": 3, "bbox": [10, 7, 21, 13]},
        {"id": 2, "image_id": 2, "category_id": 3, "bbox": [10, 7, 21.0, 13]},
    ]
    dicts, _ = load_coco_json(
        write_json(tmp_path / "t.json", tiny_coco(annotations=annotations)), tmp_path, "tiny"
    )
    integer, mixed = (anno["bbox"] for anno in dicts[0]["annotations"])
    assert integer == [10, 7, 31, 20] and all(type(v) is int for v in integer)
    assert mixed == [10.0, 7.0, 31.0, 20.0] and all(type(v) is float for v in mixed)


def test_training_filter_drops_images_without_non_crowd_objects(tmp_path: Path) -> None:
    dicts, _ = load_coco_json(write_json(tmp_path / "t.json", tiny_coco()), tmp_path, "tiny")
    assert [d["image_id"] for d in filter_images_with_only_crowd_annotations(dicts)] == [2]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"annotations": [{"id": 1, "image_id": 2, "category_id": 4, "bbox": [0, 0, 1, 1]}]},
            "category_id 4",
        ),
        ({"annotations": [{"id": 1, "image_id": 3, "category_id": 3, "bbox": [0, 0, 1, 1]}]}, "image 3"),
        ({"annotations": [{"id": 1, "image_id": 2, "category_id": 3, "bbox": []}]}, "'bbox'"),
        ({"annotations": [{"id": 1, "image_id": 2, "category_id": 3, "bbox": [0, 0, "1", 1]}]}, "numbers"),
        (
            {
                "annotations": [
                    {"id": 1, "image_id": 2, "category_id": 3, "bbox": [0, 0, 1, 1]},
                    {"id": 1, "image_id": 2, "category_id": 3, "bbox": [0, 0, 2, 2]},
                ]
            },
            "not unique",
        ),
        ({"categories": []}, "categories"),
    ],
)
def test_malformed_files_are_refused_with_the_reason(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    path = write_json(tmp_path / "t.json", tiny_coco(**change))
    with pytest.raises(DatasetError, match=message):
        load_coco_json(path, tmp_path, "tiny")


def test_builtin_coco_names_resolve_under_detectron2_datasets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = DatasetCatalog()
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    entry = catalog.get("coco_2017_val")
    assert entry.json_file == Path("datasets/coco/annotations/instances_val2017.json")
    assert entry.image_root == Path("datasets/coco/val2017")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    entry = catalog.get("coco_2017_train")
    assert entry.json_file == tmp_path / "coco/annotations/instances_train2017.json"
    assert entry.image_root == tmp_path / "coco/train2017"
    minival = catalog.get("coco_2014_minival")
    assert minival.json_file == tmp_path / "coco/annotations/instances_minival2014.json"
    assert minival.image_root == tmp_path / "coco/val2014"
    with pytest.raises(DatasetError, match=r"DETECTRON2_DATASETS"):
        catalog.load("coco_2017_val")  # no files there


def test_builtin_coco_split_loads_from_the_detectron2_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "coco/annotations").mkdir(parents=True)
    (tmp_path / "coco/val2017").mkdir()
    write_json(tmp_path / "coco/annotations/instances_val2017.json", tiny_coco())
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    dicts, meta = DatasetCatalog().load("coco_2017_val")
    assert len(dicts) == 3 and meta.name == "coco_2017_val"
    assert dicts[0]["file_name"] == str(tmp_path / "coco/val2017/a.png")


def test_unknown_name_lists_known_ones_and_how_to_register() -> None:
    with pytest.raises(DatasetError) as info:
        DatasetCatalog().get("my_dataset")
    message = str(info.value)
    assert "my_dataset" in message and "coco_2017_val" in message and "synthetic_shapes_train" in message
    assert "--register-coco NAME JSON IMAGE_ROOT" in message


def test_registered_datasets_load_and_combine(tmp_path: Path) -> None:
    catalog = DatasetCatalog()
    catalog.register_coco("mine", write_json(tmp_path / "a.json", tiny_coco()), tmp_path)
    catalog.register_coco("mine_too", write_json(tmp_path / "b.json", tiny_coco()), tmp_path)
    assert "mine" in catalog.names()
    dicts, meta = get_detection_dataset_dicts(["mine", "mine_too"], catalog, filter_empty=True)
    assert [d["image_id"] for d in dicts] == [2, 2] and meta.name == "mine"
    dicts, _ = get_detection_dataset_dicts(["mine"], catalog, filter_empty=False)
    assert len(dicts) == 3
    with pytest.raises(DatasetError, match="builtin"):
        catalog.register_coco("coco_2017_val", tmp_path / "a.json", tmp_path)
    with pytest.raises(DatasetError, match="already registered"):
        catalog.register_coco("mine", tmp_path / "other.json", tmp_path)


def test_datasets_with_different_classes_cannot_be_combined(tmp_path: Path) -> None:
    catalog = DatasetCatalog()
    catalog.register_coco("a", write_json(tmp_path / "a.json", tiny_coco()), tmp_path)
    other = tiny_coco(
        categories=[{"id": 3, "name": "apple"}, {"id": 7, "name": "kite"}, {"id": 12, "name": "zoo"}]
    )
    catalog.register_coco("b", write_json(tmp_path / "b.json", other), tmp_path)
    with pytest.raises(DatasetError, match="different classes"):
        get_detection_dataset_dicts(["a", "b"], catalog)
