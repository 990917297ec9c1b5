"""Detectron2's learning-rate schedules: a warmup followed by multi-step, cosine or
fixed-gamma step decay, as multipliers of each parameter group's base learning rate.

The arithmetic follows fvcore's ``ParamScheduler`` classes that Detectron2 composes in
``build_lr_scheduler`` (``WarmupParamScheduler`` + ``LRMultiplier``), including their
``WHERE_EPSILON`` rounding, so that every iteration gets the same learning rate as there.
Iteration ``i`` (0-based) trains with ``base_lr * multiplier(i)``; the scheduler is stepped
after each iteration.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["SCHEDULER_NAMES", "LRMultiplier", "WarmupSchedule"]

logger = logging.getLogger(__name__)

SCHEDULER_NAMES = ("WarmupMultiStepLR", "WarmupCosineLR", "WarmupStepWithFixedGammaLR")
_WHERE_EPSILON = 1e-6


class WarmupSchedule:
    """The learning-rate multiplier of each iteration.

    Args:
        name: one of :data:`SCHEDULER_NAMES` (``SOLVER.LR_SCHEDULER_NAME``).
        max_iter: ``SOLVER.MAX_ITER``.
        steps: ``SOLVER.STEPS`` (multi-step); steps beyond ``max_iter`` are ignored.
        gamma: ``SOLVER.GAMMA``, the factor applied at each step.
        warmup_factor: ``SOLVER.WARMUP_FACTOR``, the multiplier at iteration 0.
        warmup_iters: ``SOLVER.WARMUP_ITERS``.
        warmup_method: ``"linear"`` (from ``warmup_factor`` up to the schedule's value when the
            warmup ends) or ``"constant"`` (``warmup_factor`` throughout the warmup).
        end_factor: ``BASE_LR_END / BASE_LR`` (cosine).
        num_decays: ``SOLVER.NUM_DECAYS`` (fixed-gamma steps).
        rescale_interval: ``SOLVER.RESCALE_INTERVAL``: the schedule after the warmup spans the
            remaining iterations instead of the whole run.

    Raises:
        ValueError: an unknown name or method, or steps that are not increasing.
    """

    def __init__(
        self,
        name: str,
        max_iter: int,
        *,
        steps: Sequence[int] = (),
        gamma: float = 0.1,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        end_factor: float = 0.0,
        num_decays: int = 3,
        rescale_interval: bool = False,
    ) -> None:
        if name not in SCHEDULER_NAMES:
            raise ValueError(
                f"SOLVER.LR_SCHEDULER_NAME {name!r} is not supported; choose one of {SCHEDULER_NAMES}"
            )
        if warmup_method not in ("linear", "constant"):
            raise ValueError(f"SOLVER.WARMUP_METHOD must be 'linear' or 'constant', got {warmup_method!r}")
        if max_iter <= 0:
            raise ValueError(f"SOLVER.MAX_ITER must be positive, got {max_iter}")
        self.name = name
        self.max_iter = max_iter
        kept = [int(s) for s in steps if s <= max_iter]
        if len(kept) != len(steps):
            logger.warning(
                "SOLVER.STEPS %s has values beyond SOLVER.MAX_ITER %d: ignored", list(steps), max_iter
            )
        if any(b <= a for a, b in zip([0, *kept], kept, strict=False)) or any(s >= max_iter for s in kept):
            raise ValueError(
                f"SOLVER.STEPS {list(steps)} must be increasing, positive and below "
                f"SOLVER.MAX_ITER {max_iter}"
            )
        self.steps = kept
        self.gamma = gamma
        self.end_factor = end_factor
        self.num_decays = num_decays
        self.warmup_length = min(warmup_iters / max_iter, 1.0)
        self.rescale_interval = rescale_interval
        self.warmup_method = warmup_method
        self.warmup_start = warmup_factor * self._main(0.0)
        self.warmup_end = self._main(0.0) if rescale_interval else self._main(self.warmup_length)

    def _main(self, where: float) -> float:
        """The schedule without warmup at ``where`` in [0, 1] of its interval."""
        if self.name == "WarmupMultiStepLR":
            iteration = int((where + _WHERE_EPSILON) * self.max_iter)
            return self.gamma ** bisect.bisect_right(self.steps, iteration)
        if self.name == "WarmupCosineLR":
            return self.end_factor + 0.5 * (1.0 - self.end_factor) * (1 + math.cos(math.pi * where))
        values = [1.0]
        for _ in range(self.num_decays):
            values.append(values[-1] * self.gamma)
        return values[min(int((where + _WHERE_EPSILON) * len(values)), len(values) - 1)]

    def __call__(self, iteration: int) -> float:
        """The multiplier of the learning rate at ``iteration`` (0-based, up to ``max_iter``)."""
        where = iteration / self.max_iter
        if where + _WHERE_EPSILON <= self.warmup_length:
            warmup_where = where / self.warmup_length
            if self.warmup_method == "constant":
                return self.warmup_start
            return self.warmup_end * warmup_where + self.warmup_start * (1 - warmup_where)
        if self.rescale_interval:
            where = (where - self.warmup_length) / (1 - self.warmup_length)
        return self._main(where)


class LRMultiplier(LRScheduler):
    """Sets every parameter group's learning rate to its initial value times ``schedule``.

    ``last_epoch`` counts iterations: after ``k`` calls of :meth:`step` the optimizer uses the
    multiplier of iteration ``k``. Its state (``base_lrs``, ``last_epoch``) is what a training
    checkpoint stores to resume on the same schedule.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, schedule: WarmupSchedule, last_iter: int = -1
    ) -> None:
        self.schedule = schedule
        super().__init__(optimizer, last_epoch=last_iter)

    def state_dict(self) -> dict[str, Any]:
        """``base_lrs`` and ``last_epoch``; the schedule itself comes from the config."""
        return {"base_lrs": self.base_lrs, "last_epoch": self.last_epoch}

    def get_lr(self) -> list[float]:  # type: ignore[override]
        multiplier = self.schedule(self.last_epoch)
        return [float(base_lr) * multiplier for base_lr in self.base_lrs]
