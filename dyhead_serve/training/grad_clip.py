"""Gradient clipping as ``SOLVER.CLIP_GRADIENTS`` configures it.

``CLIP_TYPE``: ``"value"`` clamps every gradient element to ``[-CLIP_VALUE, CLIP_VALUE]``;
``"norm"`` rescales each parameter's gradient to a ``NORM_TYPE``-norm of at most ``CLIP_VALUE``
(per parameter, as Detectron2 does); ``"full_model"`` rescales all gradients together to a total
norm of at most ``CLIP_VALUE`` (an option the official DyHead ``train_net.py`` adds).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["CLIP_TYPES", "GradientClipper"]

CLIP_TYPES = ("value", "norm", "full_model")


class GradientClipper:
    """Clips gradients in place before the optimizer step.

    Args:
        clip_type: one of :data:`CLIP_TYPES`.
        clip_value: ``CLIP_VALUE``.
        norm_type: ``NORM_TYPE`` (``"norm"`` only; ``"full_model"`` uses the 2-norm like the
            official code).

    Raises:
        ValueError: an unknown type or a non-positive value.
    """

    def __init__(self, clip_type: str, clip_value: float, norm_type: float = 2.0) -> None:
        if clip_type not in CLIP_TYPES:
            raise ValueError(
                f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE {clip_type!r} is not supported; choose one of {CLIP_TYPES}"
            )
        if clip_value <= 0:
            raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be positive, got {clip_value}")
        self.clip_type = clip_type
        self.clip_value = clip_value
        self.norm_type = norm_type

    def __call__(self, params: Iterable[nn.Parameter]) -> None:
        """Clip the gradients of ``params`` (those without a gradient are skipped)."""
        with_grad = [p for p in params if p.grad is not None]
        if self.clip_type == "value":
            torch.nn.utils.clip_grad_value_(with_grad, self.clip_value)
        elif self.clip_type == "norm":
            for p in with_grad:
                torch.nn.utils.clip_grad_norm_(p, self.clip_value, self.norm_type)
        else:
            torch.nn.utils.clip_grad_norm_(with_grad, self.clip_value)
