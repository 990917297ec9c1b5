"""The one check of a per-channel input normalisation (mean, standard deviation)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["normalisation_problem"]


def normalisation_problem(
    mean: Sequence[float], std: Sequence[float], names: tuple[str, str] = ("pixel_mean", "pixel_std")
) -> str | None:
    """What is wrong with ``mean`` and ``std``, or None: every mean finite, every standard
    deviation finite and above 0. A zero, infinite or NaN value turns the image into NaN and
    infinities, which crash torchvision's deformable convolution on the CPU (a segmentation fault,
    not an exception). ``names`` are how the message names the two values."""
    if not all(math.isfinite(v) for v in mean):
        return f"{names[0]} must be finite numbers, got {list(mean)}"
    if not all(math.isfinite(v) and v > 0 for v in std):
        return f"{names[1]} must be finite and above 0, got {list(std)}"
    return None
