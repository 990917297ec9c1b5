"""Convolution with an attached normalisation, and the normalisation layers Detectron2 uses.

Module names (``conv.norm``) follow Detectron2 so that official checkpoints load unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Conv2d", "FrozenBatchNorm2d", "get_norm"]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose statistics and affine parameters are fixed buffers.

    Args:
        num_features: number of channels.
        eps: added to the variance, as in ``nn.BatchNorm2d``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)
        self.weight: Tensor
        self.bias: Tensor
        self.running_mean: Tensor
        self.running_var: Tensor

    def forward(self, x: Tensor) -> Tensor:
        if x.requires_grad:
            # batch_norm's backward would also compute gradients for the frozen statistics.
            scale = self.weight * (self.running_var + self.eps).rsqrt()
            shift = self.bias - self.running_mean * scale
            return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


_NORMS: dict[str, Callable[[int], nn.Module]] = {
    "BN": nn.BatchNorm2d,
    "FrozenBN": FrozenBatchNorm2d,
    "GN": lambda channels: nn.GroupNorm(32, channels),
    "SyncBN": nn.SyncBatchNorm,
}


def get_norm(norm: str, out_channels: int) -> nn.Module | None:
    """Build the normalisation named in a config (``""`` means none)."""
    if not norm:
        return None
    if norm not in _NORMS:
        raise ValueError(f"unknown normalisation {norm!r}; expected one of {sorted(_NORMS)} or ''")
    return _NORMS[norm](out_channels)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` followed by an optional ``norm`` and ``activation`` submodule."""

    def __init__(
        self,
        *args: object,
        norm: nn.Module | None = None,
        activation: Callable[[Tensor], Tensor] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.norm = norm
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x
