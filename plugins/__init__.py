"""The TensorRT plugin for modulated deformable convolution (Triton kernel + QDP definition).

``dyhead_serve.plugins.modulated_deform_conv`` (the kernel's PyTorch entry point) is imported on
first use, so importing this package and :mod:`dyhead_serve.plugins.schema` needs neither Triton
nor TensorRT. The TensorRT plugin itself lives in :mod:`dyhead_serve.plugins.trt_plugin` (imports
TensorRT).

In the repository this is the folder ``plugins/``; it installs as ``dyhead_serve.plugins``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["modulated_deform_conv", "triton_available"]


def triton_available() -> bool:
    """Whether Triton can be imported (it ships with torch's CUDA wheels on Linux)."""
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def __getattr__(name: str) -> Any:
    if name == "modulated_deform_conv":
        from .mdcn import modulated_deform_conv

        return modulated_deform_conv
    raise AttributeError(f"module 'dyhead_serve.plugins' has no attribute {name!r}")
