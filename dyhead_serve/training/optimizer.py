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
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["NORM_LAYERS", "OPTIMIZERS", "OptimizerSettings", "build_optimizer", "build_param_groups"]

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


@dataclass(frozen=True)
class OptimizerSettings:
    """The optimizer of a run (Detectron2's ``SOLVER`` keys in parentheses).

    Attributes:
        name: one of :data:`OPTIMIZERS`, any case (``OPTIMIZER``).
        base_lr: ``BASE_LR``.
        weight_decay: ``WEIGHT_DECAY``.
        weight_decay_norm: ``WEIGHT_DECAY_NORM``, for parameters of normalisation layers.
        bias_lr_factor: ``BIAS_LR_FACTOR``, for parameters named ``bias``.
        weight_decay_bias: ``WEIGHT_DECAY_BIAS`` for parameters named ``bias``; None keeps the
            decay they would otherwise get.
        momentum: ``MOMENTUM`` (SGD).
        nesterov: ``NESTEROV`` (SGD).
    """

    name: str
    base_lr: float
    weight_decay: float
    weight_decay_norm: float = 0.0
    bias_lr_factor: float = 1.0
    weight_decay_bias: float | None = None
    momentum: float = 0.9
    nesterov: bool = False


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


def build_optimizer(model: nn.Module, settings: OptimizerSettings) -> torch.optim.Optimizer:
    """``settings.name`` (``SGD`` with ``momentum`` and ``nesterov``, or ``ADAMW`` with PyTorch's
    default betas and eps) over :func:`build_param_groups`.

    Raises:
        ValueError: an unknown optimizer name, or a model without trainable parameters.
    """
    s = settings
    groups = build_param_groups(
        model,
        base_lr=s.base_lr,
        weight_decay=s.weight_decay,
        weight_decay_norm=s.weight_decay_norm,
        bias_lr_factor=s.bias_lr_factor,
        weight_decay_bias=s.weight_decay_bias,
    )
    if not groups:
        raise ValueError(
            "the model has no trainable parameters (is MODEL.BACKBONE.FREEZE_AT freezing everything?)"
        )
    name = s.name.upper()
    if name == "SGD":
        return torch.optim.SGD(
            groups, lr=s.base_lr, momentum=s.momentum, nesterov=s.nesterov, weight_decay=s.weight_decay
        )
    if name == "ADAMW":
        return torch.optim.AdamW(groups, lr=s.base_lr, weight_decay=s.weight_decay)
    raise ValueError(f"SOLVER.OPTIMIZER {s.name!r} is not supported; choose one of {list(OPTIMIZERS)}")
