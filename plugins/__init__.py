"""The TensorRT plugin for modulated deformable convolution (Triton kernel + QDP definition).

``plugins.modulated_deform_conv`` (the kernel's PyTorch entry point) is imported on first use, so
``import plugins`` and :mod:`plugins.schema` need neither Triton nor TensorRT. The TensorRT
plugin itself lives in :mod:`plugins.trt_plugin` (imports TensorRT).
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
        from plugins.mdcn import modulated_deform_conv

        return modulated_deform_conv
    raise AttributeError(f"module 'plugins' has no attribute {name!r}")
