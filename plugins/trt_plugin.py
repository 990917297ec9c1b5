"""``dyhead::ModulatedDeformConv2d`` as a TensorRT Quick Deployable Plugin (QDP).

Importing this module registers the plugin with TensorRT's plugin registry (TensorRT >= 10.9):

- ``@trtp.register``: the interface of :data:`plugins.schema.MDCN_SCHEMA` (inputs ``input, offset,
  mask, weight, bias``; attributes ``stride, padding, dilation`` (int32 pairs), ``groups``,
  ``deformable_groups``) and the output shape.
- ``@trtp.autotune``: float32 or float16 for every input and the output together, linear layout,
  one custom tactic per tile configuration of :data:`plugins.mdcn_kernel.TILES`; TensorRT times
  them and keeps the fastest.
- ``@trtp.aot_impl`` (the default): the Triton kernel compiled to PTX for the building GPU (at the
  PTX ISA of its architecture, under an entry name of its own per dtype, tile, kernel size and
  bias), its int32 scalar arguments given as ``SymInt32`` expressions of the tensor shapes. The PTX is
  embedded in the engine, which then runs without Python and without a plugin library.
- ``@trtp.impl``: the same kernel launched from Python (JIT), for debugging; an engine built with
  it needs this module imported wherever it runs.

When both implementations exist TensorRT chooses by a network flag (``PREFER_AOT_PYTHON_PLUGINS``
or ``PREFER_JIT_PYTHON_PLUGINS``) or, for ONNX nodes, the node's ``aot`` attribute; see
``export/tensorrt_build.py``.

The offset and mask may be larger than the output: each image's leading values are read, as the
official DyHead kernel does (the same as the ordinary operator when the sizes match).

No ``from __future__ import annotations`` here: TensorRT reads these functions' annotations as
objects.
"""

import numpy as np
import numpy.typing as npt

from .mdcn_kernel import SCALAR_ARGS, TILES, TileConfig
from .schema import MDCN_SCHEMA

try:
    import tensorrt as trt  # type: ignore[import-not-found,unused-ignore]
    import tensorrt.plugin as trtp  # type: ignore[import-not-found,unused-ignore]
except ImportError as exc:  # pragma: no cover - depends on the machine
    raise ImportError(
        "dyhead_serve.plugins.trt_plugin needs TensorRT >= 10.9 with its Python bindings (`pip install "
        "tensorrt` on a machine with an NVIDIA driver); the Triton kernel itself is "
        "dyhead_serve.plugins.modulated_deform_conv"
    ) from exc

__all__ = ["PLUGIN_ID", "TACTICS", "tile_for_tactic"]

_MIN_VERSION = (10, 9)
_version = tuple(int(part) for part in trt.__version__.split(".")[:2])
if _version < _MIN_VERSION:  # pragma: no cover - depends on the machine
    raise ImportError(
        f"TensorRT {trt.__version__} is too old for dyhead_serve.plugins.trt_plugin: AOT Quick Deployable "
        "Plugins need TensorRT >= 10.9"
    )

PLUGIN_ID = MDCN_SCHEMA.qualified_name
# Custom tactics must be positive: tactic i runs TILES[i - 1].
TACTICS = {index + 1: tile for index, tile in enumerate(TILES)}
_IO_COUNT = len(MDCN_SCHEMA.inputs) + len(MDCN_SCHEMA.outputs)
_TRITON_DTYPES = {trt.float32: "fp32", trt.float16: "fp16", trt.bfloat16: "bf16"}


def tile_for_tactic(tactic: int) -> TileConfig:
    """The tile configuration of a tactic (0, TensorRT's default tactic, is the first one)."""
    return TACTICS.get(tactic, TILES[0])


@trtp.register(PLUGIN_ID)
def _mdcn_desc(
    input: trtp.TensorDesc,
    offset: trtp.TensorDesc,
    mask: trtp.TensorDesc,
    weight: trtp.TensorDesc,
    bias: trtp.TensorDesc,
    stride: npt.NDArray[np.int32],
    padding: npt.NDArray[np.int32],
    dilation: npt.NDArray[np.int32],
    groups: int,
    deformable_groups: int,
) -> trtp.TensorDesc:
    """Output Tensor[N, Cout, Ho, Wo] of the input's dtype."""
    dims = []
    for axis in (0, 1):  # height, width
        size = input.shape_expr[2 + axis]
        kernel = weight.shape_expr[2 + axis]
        pad, dil, step = int(padding[axis]), int(dilation[axis]), int(stride[axis])
        dims.append((size + (2 * pad - 1) - (kernel - 1) * dil) // step + 1)
    shape = (input.shape_expr[0], weight.shape_expr[0], dims[0], dims[1])
    return trtp.from_shape_expr(shape, dtype=input.dtype)


@trtp.autotune(PLUGIN_ID)
def _mdcn_autotune(
    input: trtp.TensorDesc,
    offset: trtp.TensorDesc,
    mask: trtp.TensorDesc,
    weight: trtp.TensorDesc,
    bias: trtp.TensorDesc,
    outputs: tuple[trtp.TensorDesc],
) -> list[trtp.AutoTuneCombination]:
    """All inputs and the output float32, or all float16; linear layout; one tactic per tile."""
    io_types = ", ".join(["FP32|FP16"] * _IO_COUNT)
    return [trtp.AutoTuneCombination(io_types, "LINEAR", list(TACTICS))]


def _scalar_args(
    input: trtp.TensorDesc,
    offset: trtp.TensorDesc,
    mask: trtp.TensorDesc,
    output: trtp.TensorDesc,
    stride: npt.NDArray[np.int32],
    padding: npt.NDArray[np.int32],
    dilation: npt.NDArray[np.int32],
    groups: int,
    deformable_groups: int,
) -> list:
    """The kernel's int32 scalars (:data:`plugins.mdcn_kernel.SCALAR_ARGS`, in order) as shape
    expressions or constants."""
    x, off, msk, out = input.shape_expr, offset.shape_expr, mask.shape_expr, output.shape_expr
    values = {
        "batch": x[0],
        "in_channels": x[1],
        "height": x[2],
        "width": x[3],
        "out_channels": out[1],
        "out_height": out[2],
        "out_width": out[3],
        "offset_image_stride": off[1] * off[2] * off[3],
        "mask_image_stride": msk[1] * msk[2] * msk[3],
        "stride_h": int(stride[0]),
        "stride_w": int(stride[1]),
        "pad_h": int(padding[0]),
        "pad_w": int(padding[1]),
        "dil_h": int(dilation[0]),
        "dil_w": int(dilation[1]),
        "groups": int(groups),
        "deformable_groups": int(deformable_groups),
    }
    return [values[name] for name in SCALAR_ARGS]


def _constant(expr: "trtp.ShapeExpr", what: str) -> int:
    if expr.is_fake or not expr.is_constant:
        raise ValueError(f"{PLUGIN_ID}: the {what} must be known when the engine is built")
    return int(expr.constant_value())


@trtp.aot_impl(PLUGIN_ID)
def _mdcn_aot_impl(
    input: trtp.TensorDesc,
    offset: trtp.TensorDesc,
    mask: trtp.TensorDesc,
    weight: trtp.TensorDesc,
    bias: trtp.TensorDesc,
    stride: npt.NDArray[np.int32],
    padding: npt.NDArray[np.int32],
    dilation: npt.NDArray[np.int32],
    groups: int,
    deformable_groups: int,
    outputs: tuple[trtp.TensorDesc],
    tactic: int,
) -> tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]:
    """Compile the kernel for this dtype and tactic to PTX for the building GPU.

    The GPU's compute capability is named explicitly: left to itself, Triton would query the
    driver and build its ``cuda_utils`` extension inside the builder callback.
    """
    from .mdcn_ptx import compile_ptx, current_arch

    if input.dtype not in _TRITON_DTYPES:
        raise ValueError(f"{PLUGIN_ID}: unsupported dtype {input.dtype}")
    tile = tile_for_tactic(tactic)
    kernel_size = (
        _constant(weight.shape_expr[2], "kernel height"),
        _constant(weight.shape_expr[3], "kernel width"),
    )
    out_channels = _constant(weight.shape_expr[0], "number of output channels")
    compiled = compile_ptx(
        _TRITON_DTYPES[input.dtype], tile, arch=current_arch(), kernel_size=kernel_size, has_bias=True
    )
    out = outputs[0].shape_expr
    launch = trtp.KernelLaunchParams()
    launch.grid_x = trtp.cdiv(out[0] * out[2] * out[3], tile.block_m)
    launch.grid_y = int(groups) * ((out_channels // int(groups) + tile.block_n - 1) // tile.block_n)
    launch.block_x = compiled.threads_per_block
    launch.shared_mem = compiled.shared_bytes
    scalars = _scalar_args(
        input, offset, mask, outputs[0], stride, padding, dilation, groups, deformable_groups
    )
    extra_args = trtp.SymIntExprs.from_tuple([trtp.SymInt32(value) for value in scalars])
    return compiled.name, compiled.ptx, launch, extra_args


@trtp.impl(PLUGIN_ID)
def _mdcn_jit_impl(
    input: trtp.Tensor,
    offset: trtp.Tensor,
    mask: trtp.Tensor,
    weight: trtp.Tensor,
    bias: trtp.Tensor,
    stride: npt.NDArray[np.int32],
    padding: npt.NDArray[np.int32],
    dilation: npt.NDArray[np.int32],
    groups: int,
    deformable_groups: int,
    outputs: tuple[trtp.Tensor],
    stream: int,
    tactic: int,
) -> None:
    """Run the kernel from Python on TensorRT's stream (debugging; needs torch and Triton)."""
    import torch

    from .mdcn import modulated_deform_conv

    with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
        x, off, msk, w, b = (torch.as_tensor(t, device="cuda") for t in (input, offset, mask, weight, bias))
        result = modulated_deform_conv(
            x,
            off,
            msk,
            w,
            b,
            stride=(int(stride[0]), int(stride[1])),
            padding=(int(padding[0]), int(padding[1])),
            dilation=(int(dilation[0]), int(dilation[1])),
            groups=int(groups),
            offset_mode="leading",
            tile=tile_for_tactic(tactic),
        )
        torch.as_tensor(outputs[0], device="cuda").copy_(result)
