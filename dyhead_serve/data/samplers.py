"""Samplers of the training loader: an infinite, seeded index stream sharded by rank, and
batches grouped by aspect ratio (Detectron2's ``TrainingSampler`` and aspect-ratio grouping)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["GroupedBatchSampler", "InferenceSampler", "TrainingSampler", "aspect_ratio_group_ids"]


def _rank_and_world_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _shared_random_seed() -> int:
    """A random seed, the same on every process (rank 0's, broadcast when distributed)."""
    seed = torch.tensor([int(np.random.randint(2**31))], dtype=torch.int64)
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            seed = seed.cuda()
        dist.broadcast(seed, src=0)
    return int(seed.item())


class TrainingSampler(Sampler[int]):
    """An endless stream of dataset indices, each process taking its share.

    The stream is ``shuffle(range(size)) + shuffle(range(size)) + ...`` drawn from a
    ``torch.Generator`` seeded with ``seed`` (the same on every process); process ``rank`` of
    ``world_size`` yields elements ``rank, rank + world_size, ...`` of it, so the processes
    together consume the stream in order, each index once per epoch.

    Args:
        size: the number of items in the dataset.
        shuffle: shuffle each pass (else ``0, 1, ..., size-1`` repeated).
        seed: seed of the shuffle; ``None`` draws one on rank 0 and shares it. Detectron2 passes
            ``cfg.SEED`` unchanged, so ``-1`` is a fixed seed, as there.
        rank, world_size: this process's share; by default from ``torch.distributed`` when it
            is initialised, else (0, 1).
    """

    def __init__(
        self,
        size: int,
        shuffle: bool = True,
        seed: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if size <= 0:
            raise ValueError(f"TrainingSampler needs a non-empty dataset, got size={size}")
        default_rank, default_world = _rank_and_world_size()
        self.size = size
        self.shuffle = shuffle
        self.seed = _shared_random_seed() if seed is None else int(seed)
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, {self.world_size})")

    def __iter__(self) -> Iterator[int]:
        for position, index in enumerate(self._infinite_indices()):
            if position % self.world_size == self.rank:
                yield index

    def _infinite_indices(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed)
        while True:
            if self.shuffle:
                yield from torch.randperm(self.size, generator=generator).tolist()
            else:
                yield from range(self.size)


class InferenceSampler(Sampler[int]):
    """Every index exactly once over all processes: process ``rank`` takes one contiguous slice."""

    def __init__(self, size: int, rank: int | None = None, world_size: int | None = None) -> None:
        default_rank, default_world = _rank_and_world_size()
        rank = default_rank if rank is None else rank
        world_size = default_world if world_size is None else world_size
        shard_sizes = [size // world_size + int(r < size % world_size) for r in range(world_size)]
        begin = sum(shard_sizes[:rank])
        self.indices = range(begin, begin + shard_sizes[rank])

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def aspect_ratio_group_ids(sizes: Sequence[tuple[int, int]]) -> list[int]:
    """Group of each (height, width): 0 for landscape (w > h), 1 otherwise, as Detectron2."""
    return [0 if width > height else 1 for height, width in sizes]


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` indices from ``sampler``, each batch from a single group.

    Indices are taken in the sampler's order and kept in one buffer per group; a buffer is
    yielded as soon as it is full (Detectron2's aspect-ratio grouping). Incomplete buffers are
    never yielded, so use an infinite sampler.

    Args:
        sampler: yields dataset indices.
        group_ids: the group of each dataset index (see :func:`aspect_ratio_group_ids`).
        batch_size: indices per batch.
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = {}
        for index in self.sampler:
            buffer = buffers.setdefault(self.group_ids[index], [])
            buffer.append(index)
            if len(buffer) == self.batch_size:
                yield buffer[:]
                buffer.clear()
