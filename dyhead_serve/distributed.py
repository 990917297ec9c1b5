"""The few process-group facts training needs: world size, rank, and a sum across processes.

Everything here works without ``torch.distributed`` being initialised (one process): the
world size is 1, the rank 0, and a sum across processes is the value itself.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_reduce_mean", "all_reduce_sum", "get_rank", "get_world_size", "is_main_process"]


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of training processes (1 without an initialised process group)."""
    return dist.get_world_size() if _initialised() else 1


def get_rank() -> int:
    """Global rank of this process (0 without an initialised process group)."""
    return dist.get_rank() if _initialised() else 0


def is_main_process() -> bool:
    """True on the process that writes files and logs progress."""
    return get_rank() == 0


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """A new tensor holding the element-wise sum of ``tensor`` over every process."""
    if get_world_size() < 2:
        return tensor
    total = tensor.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean of each scalar over every process (the same dict on every process)."""
    if get_world_size() < 2 or not values:
        return dict(values)
    names = sorted(values)
    stacked = torch.tensor([values[n] for n in names], dtype=torch.float64, device=device)
    stacked = all_reduce_sum(stacked) / get_world_size()
    return {n: float(v) for n, v in zip(names, stacked.tolist(), strict=True)}
