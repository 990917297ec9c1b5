"""The RetinaNet head in Detectron2's form (``cls_subnet``/``bbox_subnet``, 3x3 predictors)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from dyhead_serve.modeling.heads.flatten import flatten_levels
from dyhead_serve.modeling.layers import get_norm

__all__ = ["RetinaNetHead"]


class RetinaNetHead(nn.Module):
    """Two towers of ``num_convs`` 3x3 conv + ReLU, then 3x3 class and box predictors.

    Args:
        in_channels: channels of every input level.
        num_classes: number of foreground classes.
        num_anchors: anchors per location.
        num_convs: conv layers in each tower.
        norm: ``""`` or ``"GN"`` after each tower conv.
        prior_prob: initial foreground probability of the classifier.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_anchors: int,
        num_convs: int = 4,
        norm: str = "",
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        if norm not in ("", "GN"):
            raise ValueError(f"RETINANET.NORM {norm!r} is not supported; use '' or 'GN'")
        self.num_classes = num_classes
        cls_subnet: list[nn.Module] = []
        bbox_subnet: list[nn.Module] = []
        for _ in range(num_convs):
            for subnet in (cls_subnet, bbox_subnet):
                subnet.append(nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1))
                norm_layer = get_norm(norm, in_channels)
                if norm_layer is not None:
                    subnet.append(norm_layer)
                subnet.append(nn.ReLU())
        self.cls_subnet = nn.Sequential(*cls_subnet)
        self.bbox_subnet = nn.Sequential(*bbox_subnet)
        self.cls_score = nn.Conv2d(in_channels, num_anchors * num_classes, kernel_size=3, stride=1, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=3, stride=1, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.constant_(
            self.cls_score.bias,  # type: ignore[arg-type]
            -math.log((1 - prior_prob) / prior_prob),
        )

    def forward(self, features: Sequence[Tensor]) -> dict[str, Tensor]:
        """Levels finest first -> ``logits`` Tensor[N, R, num_classes], ``deltas`` Tensor[N, R, 4]."""
        logits = [self.cls_score(self.cls_subnet(f)) for f in features]
        deltas = [self.bbox_pred(self.bbox_subnet(f)) for f in features]
        return {"logits": flatten_levels(logits, self.num_classes), "deltas": flatten_levels(deltas, 4)}
