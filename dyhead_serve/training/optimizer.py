"""The optimizer of a training run: Detectron2's parameter groups, SGD or AdamW.

Parameter groups follow Detectron2's ``get_default_optimizer_params`` as its
``build_optimizer`` calls it: every trainable parameter gets ``BASE_LR`` and ``WEIGHT_DECAY``;
parameters of normalisation layers (BatchNorm, GroupNorm, LayerNorm, ...) get
``WEIGHT_DECAY_NORM``; parameters named ``bias`` then get ``BASE_LR * BIAS_LR_FACTOR`` and, when
set, ``WEIGHT_DECAY_BIAS``. Parameters with equal settings share a group.

The official DyHead ``train_net.py`` builds its groups differently (no norm rule; every name
*containing* ``bias`` gets the bias settings). For its ResNet configs this differs only in the
weight decay of the DyHead's GroupNorm parameters: ``WEIGHT_DECAY_NORM`` (Detectron2's default
0) here, ``WEIGHT_DECAY`` there; set ``SOLVER.WEIGHT_DECAY_NORM`` to ``SOLVER.WEIGHT_DECAY`` to
reproduce that recipe.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

__all__ = ["NORM_LAYERS", "OPTIMIZERS", "build_optimizer", "build_param_groups"]

logger = logging.getLogger(__name__)

NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
OPTIMIZERS = ("SGD", "ADAMW")


def build_param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float,
    bias_lr_factor: float = 1.0,
    weight_decay_bias: float | None = None,
) -> list[dict[str, Any]]:
    """Detectron2's parameter groups of ``model``'s trainable parameters.

    Args:
        model: the model (not wrapped in DistributedDataParallel).
        base_lr: ``SOLVER.BASE_LR``.
        weight_decay: ``SOLVER.WEIGHT_DECAY``.
        weight_decay_norm: ``SOLVER.WEIGHT_DECAY_NORM``, for parameters of normalisation layers.
        bias_lr_factor: ``SOLVER.BIAS_LR_FACTOR``, for parameters named ``bias``.
        weight_decay_bias: ``SOLVER.WEIGHT_DECAY_BIAS`` for parameters named ``bias``; None
            keeps the decay they would otherwise get.

    Returns:
        Groups ``{"params": [...], "lr": ..., "weight_decay": ...}`` in first-seen order; a
        parameter shared by several modules appears once.
    """
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr, decay = base_lr, weight_decay
            if isinstance(module, NORM_LAYERS):
                decay = weight_decay_norm
            if name == "bias":
                lr = base_lr * bias_lr_factor
                if weight_decay_bias is not None:
                    decay = weight_decay_bias
            groups.setdefault((lr, decay), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]


def build_optimizer(cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER`` (``SGD`` with ``MOMENTUM`` and ``NESTEROV``, or ``ADAMW`` with
    PyTorch's default betas and eps) over :func:`build_param_groups`.

    Raises:
        ValueError: an unknown optimizer name, or a model without trainable parameters.
    """
    s = cfg.SOLVER
    groups = build_param_groups(
        model,
        base_lr=float(s.BASE_LR),
        weight_decay=float(s.WEIGHT_DECAY),
        weight_decay_norm=float(s.WEIGHT_DECAY_NORM),
        bias_lr_factor=float(s.BIAS_LR_FACTOR),
        weight_decay_bias=None if s.WEIGHT_DECAY_BIAS is None else float(s.WEIGHT_DECAY_BIAS),
    )
    if not groups:
        raise ValueError(
            "the model has no trainable parameters (is MODEL.BACKBONE.FREEZE_AT freezing everything?)"
        )
    name = str(s.OPTIMIZER).upper()
    if name == "SGD":
        return torch.optim.SGD(
            groups, lr=float(s.BASE_LR), momentum=float(s.MOMENTUM), nesterov=bool(s.NESTEROV),
            weight_decay=float(s.WEIGHT_DECAY),
        )  # fmt: skip
    if name == "ADAMW":
        return torch.optim.AdamW(groups, lr=float(s.BASE_LR), weight_decay=float(s.WEIGHT_DECAY))
    raise ValueError(f"SOLVER.OPTIMIZER {s.OPTIMIZER!r} is not supported; choose one of {list(OPTIMIZERS)}")
