"""A procedurally generated, photograph-like test image (no files, no network)."""

from __future__ import annotations

import numpy as np

__all__ = ["synthetic_photo"]


def synthetic_photo(height: int = 600, width: int = 1000, seed: int = 0) -> np.ndarray:
    """RGB uint8 [height, width, 3]: smooth gradients, soft coloured blobs and sensor-like noise,
    so that a detector's activations look like those of a photograph."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([xx / width * 255, yy / height * 255, (xx + yy) / (width + height) * 255], axis=-1)
    for _ in range(12):
        cy, cx, r = (
            rng.uniform(0, height),
            rng.uniform(0, width),
            rng.uniform(0.03, 0.25) * min(height, width),
        )
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))[..., None]
        image = image * (1 - blob) + rng.uniform(0, 255, size=3) * blob
    image += rng.normal(0, 8, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)
