"""The one cache folder: downloaded weights, generated datasets and TensorRT engines.

``$DYHEAD_SERVE_CACHE`` when set, else ``~/.cache/dyhead-serve``. Downloaded weights live in its
``weights/`` folder under the last part of their URL, whoever asked for them (a zoo model,
``MODEL.WEIGHTS``, ``zoo list`` checking what is cached).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_VARIABLE", "cache_dir", "cached_weights_path"]

CACHE_VARIABLE = "DYHEAD_SERVE_CACHE"


def cache_dir() -> Path:
    """``$DYHEAD_SERVE_CACHE``, else ``~/.cache/dyhead-serve``."""
    root = os.environ.get(CACHE_VARIABLE)
    return Path(root) if root else Path.home() / ".cache" / "dyhead-serve"


def cached_weights_path(url: str) -> Path:
    """Where the weights file downloaded from ``url`` is cached (present or not)."""
    return cache_dir() / "weights" / url.rsplit("/", 1)[-1]
