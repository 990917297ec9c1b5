"""The generated shapes dataset: deterministic, exact boxes inside the images, balanced classes."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dyhead_serve.data import synthetic
from dyhead_serve.data.catalog import DatasetCatalog
from dyhead_serve.data.synthetic import SHAPE_CLASSES, SyntheticSpec, generate_synthetic_dataset, render_image
from dyhead_serve.pipeline.image_io import read_image


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    a = generate_synthetic_dataset(tmp_path / "a", 4, 2, image_size=96, seed=3)
    b = generate_synthetic_dataset(tmp_path / "b", 4, 2, image_size=96, seed=3)
    c = generate_synthetic_dataset(tmp_path / "c", 4, 2, image_size=96, seed=4)
    assert len(_files(a.root)) == 4 + 2 + 2
    assert _files(a.root) == _files(b.root)
    assert _files(a.root)["train/000001.png"] != _files(c.root)["train/000001.png"]
    # an image does not depend on how many others there are
    d = generate_synthetic_dataset(tmp_path / "d", 2, 0, image_size=96, seed=3)
    assert _files(d.root)["train/000002.png"] == _files(a.root)["train/000002.png"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> synthetic.SyntheticDatasetPaths:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("shapes"), 40, 4, image_size=96, seed=0)


def test_boxes_lie_inside_their_images_and_match_the_image_sizes(
    dataset: synthetic.SyntheticDatasetPaths,
) -> None:
    coco = json.loads(dataset.json_file("train").read_text())
    images = {image["id"]: image for image in coco["images"]}
    assert {(im["width"], im["height"]) for im in images.values()} <= {(96, 96), (96, 72), (72, 96)}
    for image in list(images.values())[:3]:
        assert read_image(dataset.image_root("train") / image["file_name"]).shape == (
            image["height"],
            image["width"],
            3,
        )
    for anno in coco["annotations"]:
        x, y, w, h = anno["bbox"]
        image = images[anno["image_id"]]
        assert x >= 0 and y >= 0 and w > 0 and h > 0
        assert x + w <= image["width"] and y + h <= image["height"]
        assert 0 < anno["area"] <= w * h and anno["iscrowd"] == 0
    assert [c["name"] for c in coco["categories"]] == list(SHAPE_CLASSES)


def test_classes_are_balanced_and_sizes_varied(dataset: synthetic.SyntheticDatasetPaths) -> None:
    coco = json.loads(dataset.json_file("train").read_text())
    counts = Counter(anno["category_id"] for anno in coco["annotations"])
    assert sorted(counts) == list(range(1, len(SHAPE_CLASSES) + 1))
    mean = len(coco["annotations"]) / len(SHAPE_CLASSES)
    assert min(counts.values()) >= 0.5 * mean and max(counts.values()) <= 1.5 * mean
    sides = [max(anno["bbox"][2:]) for anno in coco["annotations"]]
    assert min(sides) < 20 and max(sides) > 40
    assert max(Counter(anno["image_id"] for anno in coco["annotations"]).values()) >= 3  # crowded images


def test_box_is_the_extent_of_the_shape_pixels_on_a_plain_image() -> None:
    # One object on a drawn image: every pixel outside its box equals the background there,
    # and each edge row/column of the box holds a pixel that differs.
    for seed in range(30):
        rng = np.random.default_rng(seed)
        image, objects = render_image(rng, 80, 64)
        if len(objects) != 1:
            continue
        background = synthetic._background(np.random.default_rng(seed), 64, 80)  # same first draws
        _, (x1, y1, x2, y2), _ = objects[0]
        changed = np.abs(image.astype(np.float32) - np.clip(np.rint(background), 0, 255)).max(axis=2) > 20
        ys, xs = np.nonzero(changed)
        assert xs.min() >= x1 and xs.max() < x2 and ys.min() >= y1 and ys.max() < y2
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)
        return
    pytest.fail("no single-object image in 30 seeds")


def test_builtin_names_generate_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYHEAD_SERVE_CACHE", str(tmp_path))
    monkeypatch.setattr(
        synthetic, "BUILTIN_SYNTHETIC", SyntheticSpec(num_train=3, num_val=2, image_size=64, seed=0)
    )
    catalog = DatasetCatalog()
    dicts, meta = catalog.load("synthetic_shapes_val")
    assert len(dicts) == 2 and meta.thing_classes == SHAPE_CLASSES
    root = synthetic.builtin_synthetic_paths().root
    assert root.parent == tmp_path / "datasets" and root.is_dir()
    stamp = synthetic.builtin_synthetic_paths().json_file("train").stat().st_mtime_ns
    train, _ = catalog.load("synthetic_shapes_train")
    assert len(train) == 3
    assert (
        synthetic.builtin_synthetic_paths().json_file("train").stat().st_mtime_ns == stamp
    )  # not regenerated
    assert [p.name for p in (tmp_path / "datasets").iterdir()] == [root.name]  # no scratch folder left
