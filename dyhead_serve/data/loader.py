"""Data loaders: the infinite training loader of a config, and a sequential test loader.

The training loader yields lists of :class:`~dyhead_serve.data.mapper.TrainingSample` (no
collation: images of a batch differ in size; the model pads them). Each process of a DDP run
gets ``SOLVER.IMS_PER_BATCH / world_size`` images per batch from its share of one seeded
index stream.
"""

from __future__ import annotations

import logging
import pickle
import random
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypedDict, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

from dyhead_serve.data.catalog import DatasetCatalog, get_detection_dataset_dicts
from dyhead_serve.data.coco_json import DatasetDict
from dyhead_serve.data.mapper import DatasetMapper, TrainingSample
from dyhead_serve.data.samplers import GroupedBatchSampler, TrainingSampler, aspect_ratio_group_ids
from dyhead_serve.pipeline.image_io import read_image

__all__ = [
    "MappedDataset",
    "SerializedList",
    "TestSample",
    "build_batch_data_loader",
    "build_test_loader",
    "build_train_loader",
    "worker_init_reset_seed",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
U = TypeVar("U")


class SerializedList(Dataset[T], Generic[T]):
    """A list kept as one pickled byte buffer, so that data-loader workers, which read items,
    do not touch (and so copy) the per-object reference counts of a large list of dicts."""

    def __init__(self, items: Sequence[T]) -> None:
        blobs = [
            np.frombuffer(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8)
            for item in items
        ]
        self._ends = np.cumsum([len(blob) for blob in blobs], dtype=np.int64)
        self._buffer = np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> T:
        start = int(self._ends[index - 1]) if index > 0 else 0
        # The buffer holds only what __init__ pickled in this process: no foreign data is unpickled.
        item: T = pickle.loads(self._buffer[start : int(self._ends[index])].tobytes())
        return item


class MappedDataset(Dataset[U], Generic[T, U]):
    """``mapper(items[i])`` for each index."""

    def __init__(self, items: Dataset[T], mapper: Callable[[T], U]) -> None:
        self.items = items
        self.mapper = mapper

    def __len__(self) -> int:
        return len(self.items)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> U:
        return self.mapper(self.items[index])


def _trivial_batch_collator(batch: list[Any]) -> list[Any]:
    return batch


def worker_init_reset_seed(worker_id: int) -> None:
    """Seed ``random``, ``np.random`` and torch in a loader worker from torch's per-worker seed,
    so workers draw different augmentations (as Detectron2's function of that name)."""
    seed = torch.initial_seed() % 2**31 + worker_id
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_batch_data_loader(
    dataset: Dataset[Any],
    sampler: Sampler[int],
    batch_size: int,
    *,
    group_ids: Sequence[int] | None = None,
    num_workers: int = 0,
) -> DataLoader[Any]:
    """A loader yielding lists of ``batch_size`` items drawn by ``sampler``.

    Args:
        dataset: map-style; item ``i`` is the mapped sample ``i``.
        sampler: yields indices (a :class:`TrainingSampler` for training).
        batch_size: items per batch on this process.
        group_ids: when given, each batch holds items of one group only (aspect-ratio grouping).
        num_workers: loader worker processes (0: load in this process).
    """
    batch_sampler: Sampler[list[int]] = (
        GroupedBatchSampler(sampler, group_ids, batch_size)
        if group_ids is not None
        else BatchSampler(sampler, batch_size, drop_last=True)
    )
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=_trivial_batch_collator,
        worker_init_fn=worker_init_reset_seed,
        persistent_workers=num_workers > 0,
    )


def build_train_loader(
    cfg: Any,
    catalog: DatasetCatalog | None = None,
    *,
    mapper: Callable[[DatasetDict], TrainingSample] | None = None,
    seed: int | None = None,
) -> DataLoader[TrainingSample]:
    """The endless training loader of a Detectron2 config.

    Reads ``DATASETS.TRAIN``, ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``,
    ``DATALOADER.ASPECT_RATIO_GROUPING``, ``DATALOADER.NUM_WORKERS``,
    ``DATALOADER.SAMPLER_TRAIN`` (only ``TrainingSampler``), ``SOLVER.IMS_PER_BATCH``, ``SEED``
    and, through :meth:`DatasetMapper.from_config`, ``INPUT.*``.

    Args:
        cfg: the config.
        catalog: resolves dataset names (default: builtin names only).
        mapper: dataset dict -> sample (default: ``DatasetMapper.from_config(cfg)``).
        seed: seed of the index stream (default: ``cfg.SEED``, as Detectron2).

    Returns:
        A DataLoader over lists of samples; iterate it, do not ask its length.

    Raises:
        DatasetError: unknown or unusable datasets.
        ValueError: an unsupported sampler, or a batch size the world size does not divide.
    """
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN!r} is not supported; "
            "use 'TrainingSampler'"
        )
    world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    total = int(cfg.SOLVER.IMS_PER_BATCH)
    if total <= 0 or total % world_size:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH ({total}) must be a positive multiple of the number of "
            f"processes ({world_size})"
        )
    dicts, metadata = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, catalog or DatasetCatalog(), filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    )
    logger.info(
        "training on %d images of %s (%d classes)",
        len(dicts),
        ", ".join(cfg.DATASETS.TRAIN),
        metadata.num_classes,
    )
    group_ids = (
        aspect_ratio_group_ids([(d["height"], d["width"]) for d in dicts])
        if cfg.DATALOADER.ASPECT_RATIO_GROUPING
        else None
    )
    dataset = MappedDataset(SerializedList(dicts), mapper or DatasetMapper.from_config(cfg))
    sampler = TrainingSampler(len(dicts), seed=cfg.SEED if seed is None else seed)
    return build_batch_data_loader(
        dataset,
        sampler,
        total // world_size,
        group_ids=group_ids,
        num_workers=int(cfg.DATALOADER.NUM_WORKERS),
    )


class TestSample(TypedDict):
    """One test image as the Predictor takes it: ``image`` is RGB uint8 [H, W, 3], original size."""

    image: np.ndarray
    height: int
    width: int
    image_id: int
    file_name: str


def _read_test_sample(dataset_dict: DatasetDict) -> TestSample:
    return {
        "image": read_image(dataset_dict["file_name"]),
        "height": dataset_dict["height"],
        "width": dataset_dict["width"],
        "image_id": dataset_dict["image_id"],
        "file_name": dataset_dict["file_name"],
    }


def build_test_loader(dicts: Sequence[DatasetDict], num_workers: int = 0) -> DataLoader[TestSample]:
    """Every image of ``dicts`` once, in order, one per batch, decoded (RGB, original size)."""
    dataset = MappedDataset(SerializedList(list(dicts)), _read_test_sample)
    return DataLoader(
        dataset,
        batch_size=1,
        sampler=SequentialSampler(dataset),
        num_workers=num_workers,
        collate_fn=_trivial_batch_collator,
    )
