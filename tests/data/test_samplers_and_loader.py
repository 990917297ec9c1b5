"""Training sampler (seeded, sharded by rank), aspect-ratio grouping, the train and test loaders."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.data import SequentialSampler

from dyhead_serve.config import get_default_config
from dyhead_serve.data.catalog import DatasetCatalog
from dyhead_serve.data.coco_json import DatasetError
from dyhead_serve.data.loader import SerializedList, build_test_loader
from dyhead_serve.data.samplers import (
    GroupedBatchSampler,
    InferenceSampler,
    TrainingSampler,
    aspect_ratio_group_ids,
)
from dyhead_serve.data.synthetic import generate_synthetic_dataset
from dyhead_serve.training.from_config import train_loader


def test_grouped_batches_hold_one_aspect_group_in_sampler_order() -> None:
    # (h, w): landscape -> 0, portrait and square -> 1
    group_ids = aspect_ratio_group_ids([(10, 20), (20, 10), (5, 9), (1, 2), (8, 8), (30, 3), (2, 3)])
    assert group_ids == [0, 1, 0, 0, 1, 1, 0]
    batches = list(GroupedBatchSampler(SequentialSampler(range(7)), group_ids, batch_size=2))
    # 0(g0) 1(g1) 2(g0 -> [0, 2]) 3(g0) 4(g1 -> [1, 4]) 5(g1) 6(g0 -> [3, 6]); [5] never completes
    assert batches == [[0, 2], [1, 4], [3, 6]]


def test_training_sampler_is_seeded_endless_and_shuffles_each_pass() -> None:
    stream = list(itertools.islice(TrainingSampler(5, seed=3, rank=0, world_size=1), 15))
    assert stream == list(itertools.islice(TrainingSampler(5, seed=3, rank=0, world_size=1), 15))
    assert stream != list(itertools.islice(TrainingSampler(5, seed=4, rank=0, world_size=1), 15))
    for epoch in range(3):
        assert sorted(stream[5 * epoch : 5 * epoch + 5]) == list(range(5))
    assert stream[:5] != stream[5:10]


def test_training_sampler_shards_one_stream_across_ranks() -> None:
    whole = list(itertools.islice(TrainingSampler(7, seed=0, rank=0, world_size=1), 12))
    rank0 = list(itertools.islice(TrainingSampler(7, seed=0, rank=0, world_size=2), 6))
    rank1 = list(itertools.islice(TrainingSampler(7, seed=0, rank=1, world_size=2), 6))
    assert rank0 == whole[0::2] and rank1 == whole[1::2]


def test_inference_sampler_covers_every_index_once() -> None:
    shards = [list(InferenceSampler(7, rank=r, world_size=3)) for r in range(3)]
    assert shards == [[0, 1, 2], [3, 4], [5, 6]]


def test_serialized_list_gives_back_each_item() -> None:
    items = [{"a": 1, "b": [1.5, 2.0]}, {}, {"c": "x" * 100}]
    stored = SerializedList(items)
    assert len(stored) == 3 and [stored[i] for i in range(3)] == items


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> DatasetCatalog:
    paths = generate_synthetic_dataset(tmp_path_factory.mktemp("shapes"), 12, 3, image_size=64, seed=1)
    catalog = DatasetCatalog()
    catalog.register_coco("shapes_train", paths.json_file("train"), paths.image_root("train"))
    catalog.register_coco("shapes_val", paths.json_file("val"), paths.image_root("val"))
    return catalog


def _train_cfg(**overrides: str):  # type: ignore[no-untyped-def]
    cfg = get_default_config()
    cfg.merge_from_list(
        ["DATASETS.TRAIN", "('shapes_train',)", "SOLVER.IMS_PER_BATCH", "3", "DATALOADER.NUM_WORKERS", "0",
         "INPUT.MIN_SIZE_TRAIN", "(32,)", "INPUT.MAX_SIZE_TRAIN", "64", "SEED", "5"]
        + [item for pair in overrides.items() for item in pair]
    )  # fmt: skip
    return cfg


def test_train_loader_yields_grouped_batches_of_mapped_samples(shapes: DatasetCatalog) -> None:
    batches = list(itertools.islice(train_loader(_train_cfg(), shapes), 6))
    for batch in batches:
        assert len(batch) == 3
        assert len({sample["width"] > sample["height"] for sample in batch}) == 1  # one aspect group
        for sample in batch:
            image = sample["image"]
            assert image.dtype == torch.float32 and image.shape[0] == 3 and min(image.shape[1:]) == 32
            assert sample["gt_boxes"].shape == (len(sample["gt_classes"]), 4)
            assert sample["gt_classes"].dtype == torch.int64
            assert int(sample["gt_classes"].min()) >= 0 and int(sample["gt_classes"].max()) < 6


def test_train_loader_with_workers_and_without_grouping(shapes: DatasetCatalog) -> None:
    cfg = _train_cfg(**{"DATALOADER.NUM_WORKERS": "1", "DATALOADER.ASPECT_RATIO_GROUPING": "False"})
    batch = next(iter(train_loader(cfg, shapes)))
    assert len(batch) == 3


def test_train_loader_refuses_what_it_cannot_do(shapes: DatasetCatalog) -> None:
    with pytest.raises(ValueError, match="SAMPLER_TRAIN"):
        train_loader(_train_cfg(**{"DATALOADER.SAMPLER_TRAIN": "RepeatFactorTrainingSampler"}), shapes)
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        train_loader(_train_cfg(**{"DATASETS.TRAIN": "('nope',)"}), shapes)


def test_test_loader_gives_every_image_once_in_order(shapes: DatasetCatalog) -> None:
    dicts, _ = shapes.load("shapes_val")
    samples = [batch for batch in build_test_loader(dicts)]
    assert all(len(batch) == 1 for batch in samples)
    assert [batch[0]["image_id"] for batch in samples] == [d["image_id"] for d in dicts]
    first = samples[0][0]
    assert first["image"].shape == (first["height"], first["width"], 3)
