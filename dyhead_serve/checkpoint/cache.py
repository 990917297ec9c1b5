"""The one cache folder: downloaded weights, generated datasets and TensorRT engines.

``$DYHEAD_SERVE_CACHE`` when set, else ``~/.cache/dyhead-serve``. Downloaded weights live in its
``weights/`` folder under the last part of their URL, whoever asked for them (a zoo model,
``MODEL.WEIGHTS``, ``zoo list`` checking what is cached).
"""

from __future__ import annotations

import os
from pathlib import Path

from dyhead_serve.errors import UserError

__all__ = ["CACHE_VARIABLE", "cache_dir", "cache_folder", "cached_weights_path"]

CACHE_VARIABLE = "DYHEAD_SERVE_CACHE"


def cache_dir() -> Path:
    """``$DYHEAD_SERVE_CACHE``, else ``~/.cache/dyhead-serve`` (nothing is created).

    Raises:
        UserError: the path exists and is not a folder.
    """
    root = os.environ.get(CACHE_VARIABLE)
    path = Path(root) if root else Path.home() / ".cache" / "dyhead-serve"
    if path.exists() and not path.is_dir():
        raise UserError(f"{CACHE_VARIABLE}={path}: not a folder; point it at a writable folder")
    return path


def cache_folder(*parts: str) -> Path:
    """The cache's sub-folder ``parts``, created if missing and checked to be writable.

    Raises:
        UserError: it cannot be created or written (a file in the way, a read-only folder or
            file system, no permission); the message names the variable that moves the cache.
    """
    folder = cache_dir().joinpath(*parts)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"cannot write the cache folder {folder} ({exc.strerror or exc}); set {CACHE_VARIABLE} to a "
            "writable folder"
        ) from None
    return folder


def cached_weights_path(url: str) -> Path:
    """Where the weights file downloaded from ``url`` is cached (present or not)."""
    return cache_dir() / "weights" / url.rsplit("/", 1)[-1]
