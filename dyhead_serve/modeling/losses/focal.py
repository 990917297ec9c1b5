"""Sigmoid focal loss (Lin et al., RetinaNet) in the two forms the official models train with.

- :func:`sigmoid_focal_loss`: Detectron2's RetinaNet (``fvcore.nn.sigmoid_focal_loss``), on
  one-hot float targets, with a numerically stable binary cross-entropy.
- :func:`sigmoid_focal_loss_from_labels`: the official DyHead ATSS (its CUDA kernel
  ``SigmoidFocalLossForward``), on integer labels where 0 is background. The positive term is
  ``log(max(p, FLT_MIN))``, so it saturates at about -87.3 for very negative logits where the
  stable form would keep growing; we keep that to reproduce the official values exactly.

Both return the element-wise loss; callers sum and normalise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sigmoid_focal_loss", "sigmoid_focal_loss_from_labels"]

_FLT_MIN = torch.finfo(torch.float32).tiny


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Element-wise focal loss on binary targets.

    Args:
        logits: Tensor[*] of any shape.
        targets: Tensor[*] of the same shape, 1.0 for the positive class and 0.0 otherwise.
        alpha: weight of positives in (0, 1) (negatives get ``1 - alpha``); a negative value
            disables the weighting.
        gamma: exponent of the modulating factor ``(1 - p_t)``.

    Returns:
        Tensor[*] float32 loss.
    """
    logits = logits.float()
    targets = targets.float()
    p = torch.sigmoid(logits)
    ce_loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss


def sigmoid_focal_loss_from_labels(logits: Tensor, labels: Tensor, alpha: float, gamma: float) -> Tensor:
    """Element-wise focal loss on integer labels, as the official ATSS CUDA kernel computes it.

    Args:
        logits: Tensor[R, C] class logits.
        labels: Tensor[R] integer labels: 0 is background, ``c + 1`` is class ``c``; a negative
            label makes the row contribute nothing (ignored).
        alpha: weight of the positive term (the negative term gets ``1 - alpha``).
        gamma: exponent of the modulating factor.

    Returns:
        Tensor[R, C] float32 loss.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits [R, C] and labels [R], got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    logits = logits.float()
    num_classes = logits.shape[1]
    target = labels.view(-1, 1).long()
    class_ids = torch.arange(1, num_classes + 1, device=logits.device).view(1, -1)
    positive = (target == class_ids).to(logits.dtype)
    negative = ((target >= 0) & (target != class_ids)).to(logits.dtype)
    p = torch.sigmoid(logits)
    term_pos = torch.pow(1.0 - p, gamma) * torch.log(torch.clamp(p, min=_FLT_MIN))
    # log(1 - p) written as the kernel does: -max(x, 0) - log(1 + exp(-|x|)).
    nonneg = (logits >= 0).to(logits.dtype)
    term_neg = torch.pow(p, gamma) * (
        -1.0 * logits * nonneg - torch.log(1.0 + torch.exp(logits - 2.0 * logits * nonneg))
    )
    return -positive * term_pos * alpha - negative * term_neg * (1.0 - alpha)
