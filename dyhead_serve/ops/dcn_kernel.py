"""Which implementation runs the deformable convolutions.

- ``auto`` (default): torchvision's ``deform_conv2d``, except for CPU training (autograd
  recording on CPU tensors), which runs the faster sampling formulation
  (:func:`dyhead_serve.ops.deform_conv.deform_conv2d_by_sampling`, equal to float32 rounding).
- ``torchvision``: torchvision everywhere, CPU training included: bit-identical training losses
  to the official implementation's on the CPU, at about five times the training time.
- ``triton``: our Triton kernel (:func:`dyhead_serve.plugins.modulated_deform_conv`) for CUDA tensors; CPU
  tensors as ``auto``.

The choice is process-wide: ``DYHEAD_DCN_KERNEL=torchvision|triton|auto`` in the environment, or
:func:`set_dcn_kernel` / :func:`use_dcn_kernel` in code. Tracing and ONNX export always use the
standard operator (``torch.export`` included), and CPU inference is torchvision's whatever is
chosen.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

__all__ = [
    "DCN_KERNELS",
    "ENV_VAR",
    "get_dcn_kernel",
    "sampling_applies",
    "set_dcn_kernel",
    "triton_applies",
    "use_dcn_kernel",
]

DCN_KERNELS = ("auto", "torchvision", "triton")
ENV_VAR = "DYHEAD_DCN_KERNEL"
_selected: str | None = None  # None: read the environment


def _check(name: str) -> str:
    if name not in DCN_KERNELS:
        raise ValueError(f"unknown deformable-conv kernel {name!r}; choose one of {', '.join(DCN_KERNELS)}")
    return name


def _check_triton(how: str) -> None:
    from dyhead_serve import plugins

    if not plugins.triton_available():
        raise ValueError(f"{how} needs Triton (installed with torch's CUDA wheels on Linux)")


def get_dcn_kernel() -> str:
    """The selected kernel: set_dcn_kernel's, else $DYHEAD_DCN_KERNEL's, else auto.

    Raises:
        ValueError: an unknown name, or ``triton`` without Triton installed. Model builders call
            this, so a bad selection fails when the model is built, not in a forward pass.
    """
    if _selected is not None:
        return _selected
    name = _check(os.environ.get(ENV_VAR, "auto") or "auto")
    if name == "triton":
        _check_triton(f"{ENV_VAR}=triton")
    return name


def set_dcn_kernel(name: str | None) -> None:
    """Select ``auto``, ``torchvision`` or ``triton`` for this process (None: back to the
    environment).

    Selecting ``triton`` checks that Triton is importable, so a missing install fails here and not
    in the middle of a forward pass.
    """
    global _selected
    if name is not None and _check(name) == "triton":
        _check_triton("the triton deformable-conv kernel")
    _selected = name


@contextlib.contextmanager
def use_dcn_kernel(name: str) -> Iterator[None]:
    """Within this context, use kernel ``name``."""
    global _selected
    previous = _selected
    set_dcn_kernel(name)
    try:
        yield
    finally:
        _selected = previous


def _capturing_a_graph() -> bool:
    """Tracing, scripting, torch.export or exporting to ONNX: the standard operator must be
    recorded (torch.export alone is not an ONNX export: it captures before any exporter runs)."""
    # Not every torch that pyproject.toml allows has torch.compiler.is_exporting; one without it
    # is not running torch.export for us (`--exporter dynamo` refuses a torch that lacks its API).
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or (is_exporting is not None and is_exporting())
        or torch.onnx.is_in_onnx_export()
    )


def triton_applies(input: torch.Tensor) -> bool:
    """Whether a deformable conv on ``input`` runs the Triton kernel now."""
    if not input.is_cuda or get_dcn_kernel() != "triton":
        return False
    return not _capturing_a_graph()


def sampling_applies(
    input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, tensors: tuple[torch.Tensor | None, ...]
) -> bool:
    """Whether a deformable conv runs the sampling formulation now: CPU tensors with autograd
    recording for one of ``tensors``, one group and one offset group, any choice but
    ``torchvision``, no graph being captured."""
    if input.device.type != "cpu" or not torch.is_grad_enabled() or get_dcn_kernel() == "torchvision":
        return False
    if not any(t is not None and t.requires_grad for t in tensors) or _capturing_a_graph():
        return False
    k = weight.shape[-2] * weight.shape[-1]
    return weight.shape[1] == input.shape[1] and offset.shape[1] == 2 * k
