"""``SOLVER.REFERENCE_WORLD_SIZE``: Detectron2's linear scaling of a schedule written for one
number of GPUs to the number actually training (``DefaultTrainer.auto_scale_workers``)."""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["auto_scale_workers"]

logger = logging.getLogger(__name__)


def auto_scale_workers(cfg: Any, world_size: int) -> Any:
    """A copy of ``cfg`` scaled from ``REFERENCE_WORLD_SIZE`` processes to ``world_size``.

    With ``scale = world_size / REFERENCE_WORLD_SIZE``: ``IMS_PER_BATCH`` and ``BASE_LR`` are
    multiplied by it; ``MAX_ITER``, ``WARMUP_ITERS``, ``STEPS``, ``TEST.EVAL_PERIOD`` and
    ``CHECKPOINT_PERIOD`` divided (rounded). ``cfg`` itself is returned unchanged when
    ``REFERENCE_WORLD_SIZE`` is 0 (the default) or already equals ``world_size``.

    Raises:
        ValueError: ``IMS_PER_BATCH`` is not a multiple of ``REFERENCE_WORLD_SIZE``.
    """
    reference = int(cfg.SOLVER.REFERENCE_WORLD_SIZE)
    if reference == 0 or reference == world_size:
        return cfg
    if cfg.SOLVER.IMS_PER_BATCH % reference:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) must be a multiple of "
            f"SOLVER.REFERENCE_WORLD_SIZE ({reference})"
        )
    scale = world_size / reference
    scaled = cfg.clone()
    scaled.defrost()
    s = scaled.SOLVER
    s.IMS_PER_BATCH = round(s.IMS_PER_BATCH * scale)
    s.BASE_LR = s.BASE_LR * scale
    s.MAX_ITER = round(s.MAX_ITER / scale)
    s.WARMUP_ITERS = round(s.WARMUP_ITERS / scale)
    s.STEPS = tuple(round(step / scale) for step in s.STEPS)
    scaled.TEST.EVAL_PERIOD = round(scaled.TEST.EVAL_PERIOD / scale)
    s.CHECKPOINT_PERIOD = round(s.CHECKPOINT_PERIOD / scale)
    s.REFERENCE_WORLD_SIZE = world_size
    logger.info(
        "auto-scaled the schedule from %d to %d processes: IMS_PER_BATCH %d, BASE_LR %g, MAX_ITER %d, "
        "WARMUP_ITERS %d, STEPS %s",
        reference, world_size, s.IMS_PER_BATCH, s.BASE_LR, s.MAX_ITER, s.WARMUP_ITERS, s.STEPS,
    )  # fmt: skip
    if cfg.is_frozen():
        scaled.freeze()
    return scaled
