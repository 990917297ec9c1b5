"""The contract between feature producers (backbones, FPN) and their consumers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ShapeSpec:
    """Channels and stride (in input pixels) of one feature map."""

    channels: int
    stride: int
