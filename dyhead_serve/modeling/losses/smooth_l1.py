"""Smooth L1 loss with Detectron2's ``beta`` convention (``beta < 1e-5`` is plain L1)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["smooth_l1_loss"]


def smooth_l1_loss(prediction: Tensor, target: Tensor, beta: float) -> Tensor:
    """Element-wise ``0.5 * x**2 / beta`` where ``|x| < beta``, else ``|x| - 0.5 * beta``.

    ``x = prediction - target``, both Tensor[*] of the same shape. Unlike
    ``torch.nn.SmoothL1Loss`` the linear part has slope 1 for every ``beta``; ``beta < 1e-5``
    gives the L1 loss (and avoids the NaN gradient of the quadratic branch at ``beta == 0``).
    """
    if beta < 1e-5:
        return torch.abs(prediction - target)
    diff = torch.abs(prediction - target)
    return torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta)
