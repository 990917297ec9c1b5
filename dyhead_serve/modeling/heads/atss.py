"""The ATSS head as the official DyHead code builds it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dyhead_serve.modeling.heads.flatten import flatten_levels

__all__ = ["ATSSHead", "Scale"]


class Scale(nn.Module):
    """A learnable scalar multiplier (one per pyramid level for the box branch)."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value], dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _tower(in_channels: int, channels: int, num_convs: int, use_gn: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(num_convs):
        layers.append(nn.Conv2d(in_channels if i == 0 else channels, channels, 3, stride=1, padding=1))
        if use_gn:
            layers.append(nn.GroupNorm(32, channels))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ATSSHead(nn.Module):
    """Classification, box regression and centerness predictions for every anchor.

    With ``num_convs == 0`` (the DyHead configs) the predictors sit directly on the DyHead
    features. Box deltas of level ``l`` are multiplied by the learnable ``scales[l]``.

    Args:
        in_channels: channels of every input level.
        num_classes: number of foreground classes.
        num_anchors: anchors per location.
        num_convs: 3x3 conv layers (+GN, ReLU) in each tower before the predictors.
        channels: channels of the towers.
        use_gn: GroupNorm(32) in the towers.
        prior_prob: initial foreground probability of the classifier.
        num_levels: number of pyramid levels (one ``Scale`` each).
        pred_kernel_size: kernel of the three predictor convolutions (1 in the official DyHead
            models and mmdetection's reproduction setting, 3 in its "simple" setting).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_anchors: int = 1,
        num_convs: int = 0,
        channels: int = 256,
        use_gn: bool = True,
        prior_prob: float = 0.01,
        num_levels: int = 5,
        pred_kernel_size: int = 1,
    ) -> None:
        super().__init__()
        if pred_kernel_size not in (1, 3):
            raise ValueError(f"pred_kernel_size must be 1 or 3, got {pred_kernel_size}")
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.cls_tower: nn.Sequential | None = None
        self.bbox_tower: nn.Sequential | None = None
        if num_convs > 0:
            self.cls_tower = _tower(in_channels, channels, num_convs, use_gn)
            self.bbox_tower = _tower(in_channels, channels, num_convs, use_gn)
        pred_in = channels if num_convs > 0 else in_channels
        k, pad = pred_kernel_size, pred_kernel_size // 2
        self.cls_logits = nn.Conv2d(pred_in, num_anchors * num_classes, kernel_size=k, padding=pad)
        self.bbox_pred = nn.Conv2d(pred_in, num_anchors * 4, kernel_size=k, padding=pad)
        self.centerness = nn.Conv2d(pred_in, num_anchors, kernel_size=k, padding=pad)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.constant_(
            self.cls_logits.bias,  # type: ignore[arg-type]
            -math.log((1 - prior_prob) / prior_prob),
        )
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(num_levels)])

    def forward(self, features: Sequence[Tensor]) -> dict[str, Tensor]:
        """Levels finest first, Tensor[N, C, H_l, W_l] each ->
        ``logits`` Tensor[N, R, num_classes], ``deltas`` Tensor[N, R, 4], ``centerness`` Tensor[N, R],
        with R = sum_l H_l * W_l * num_anchors in anchor order."""
        logits, deltas, centerness = [], [], []
        for level, feature in enumerate(features):
            cls_in = feature if self.cls_tower is None else self.cls_tower(feature)
            box_in = feature if self.bbox_tower is None else self.bbox_tower(feature)
            logits.append(self.cls_logits(cls_in))
            deltas.append(self.scales[level](self.bbox_pred(box_in)))
            centerness.append(self.centerness(box_in))
        return {
            "logits": flatten_levels(logits, self.num_classes),
            "deltas": flatten_levels(deltas, 4),
            "centerness": flatten_levels(centerness, 1).squeeze(2),
        }
