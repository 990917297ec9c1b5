"""Data loaders: the infinite training loader, and a sequential test loader.

The training loader yields lists of :class:`~dyhead_serve.data.mapper.TrainingSample` (no
collation: images of a batch differ in size; the model pads them). Each process of a DDP run
gets ``images_per_batch / world_size`` images per batch from its share of one seeded index
stream.
"""

from __future__ import annotations

import logging
import pickle
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypedDict, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

from dyhead_serve.data.catalog import DatasetCatalog, get_detection_dataset_dicts
from dyhead_serve.data.coco_json import DatasetDict
from dyhead_serve.data.mapper import TrainingSample
from dyhead_serve.data.samplers import GroupedBatchSampler, TrainingSampler, aspect_ratio_group_ids
from dyhead_serve.pipeline.image_io import read_image

__all__ = [
    "MappedDataset",
    "SerializedList",
    "TestSample",
    "TrainLoaderSettings",
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


@dataclass(frozen=True)
class TrainLoaderSettings:
    """What the training loader reads (Detectron2's config keys in parentheses).

    Attributes:
        datasets: names of the training datasets (``DATASETS.TRAIN``).
        images_per_batch: images per batch over all processes (``SOLVER.IMS_PER_BATCH``).
        seed: seed of the index stream (``SEED``).
        filter_empty: drop images without objects (``DATALOADER.FILTER_EMPTY_ANNOTATIONS``).
        aspect_ratio_grouping: batches hold images of one aspect-ratio group
            (``DATALOADER.ASPECT_RATIO_GROUPING``).
        num_workers: loader worker processes (``DATALOADER.NUM_WORKERS``).
        sampler: ``DATALOADER.SAMPLER_TRAIN``; only ``TrainingSampler`` is supported.
    """

    datasets: tuple[str, ...]
    images_per_batch: int
    seed: int
    filter_empty: bool = True
    aspect_ratio_grouping: bool = True
    num_workers: int = 0
    sampler: str = "TrainingSampler"


def build_train_loader(
    settings: TrainLoaderSettings,
    mapper: Callable[[DatasetDict], TrainingSample],
    catalog: DatasetCatalog | None = None,
) -> DataLoader[TrainingSample]:
    """The endless training loader.

    Args:
        settings: datasets, batch size, seed, filtering, grouping, workers.
        mapper: dataset dict -> sample (e.g. a :class:`~dyhead_serve.data.mapper.DatasetMapper`).
        catalog: resolves dataset names (default: builtin names only).

    Returns:
        A DataLoader over lists of samples; iterate it, do not ask its length.

    Raises:
        DatasetError: unknown or unusable datasets.
        ValueError: an unsupported sampler, or a batch size the world size does not divide.
    """
    if settings.sampler != "TrainingSampler":
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN {settings.sampler!r} is not supported; use 'TrainingSampler'"
        )
    world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    total = settings.images_per_batch
    if total <= 0 or total % world_size:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH ({total}) must be a positive multiple of the number of "
            f"processes ({world_size})"
        )
    dicts, metadata = get_detection_dataset_dicts(
        settings.datasets, catalog or DatasetCatalog(), filter_empty=settings.filter_empty
    )
    logger.info(
        "training on %d images of %s (%d classes)",
        len(dicts),
        ", ".join(settings.datasets),
        metadata.num_classes,
    )
    group_ids = (
        aspect_ratio_group_ids([(d["height"], d["width"]) for d in dicts])
        if settings.aspect_ratio_grouping
        else None
    )
    dataset = MappedDataset(SerializedList(dicts), mapper)
    sampler = TrainingSampler(len(dicts), seed=settings.seed)
    return build_batch_data_loader(
        dataset,
        sampler,
        total // world_size,
        group_ids=group_ids,
        num_workers=settings.num_workers,
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
