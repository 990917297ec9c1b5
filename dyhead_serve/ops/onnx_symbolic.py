"""How ``torchvision::deform_conv2d`` is written into ONNX graphs.

Two flavours, chosen at export time (the model's ``forward`` is the same for both):

- ``"onnx"``: the standard opset-19 ``DeformConv`` node, run by ONNX Runtime and parsed by
  TensorRT >= 10.1 into its own implementation.
- ``"plugin"``: a node of our TensorRT plugin (:data:`plugins.schema.MDCN_SCHEMA`), carrying the
  ``plugin_namespace`` and ``plugin_version`` attributes TensorRT's ONNX parser uses to route it.

The official larger-offset-map read happens in plain tensor ops before the deformable conv
(see :func:`dyhead_serve.ops.deform_conv.read_leading_offset_map`), so it is part of either graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.onnx import symbolic_helper

from dyhead_serve.plugins.schema import MDCN_SCHEMA

__all__ = ["DCN_FLAVOURS", "MIN_OPSET", "deform_conv_onnx_symbolic"]

MIN_OPSET = 19  # the first opset with DeformConv
DCN_FLAVOURS = ("onnx", "plugin")
_OP = "torchvision::deform_conv2d"


def _kernel_shape(weight: Any) -> list[int]:
    sizes = symbolic_helper._get_tensor_sizes(weight)
    if sizes is None or len(sizes) != 4 or any(s is None for s in sizes[2:]):
        raise RuntimeError("deform_conv2d export needs a weight of known shape [Cout, Cin/g, kh, kw]")
    return [int(sizes[2]), int(sizes[3])]


@symbolic_helper.parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
def _onnx_deform_conv(
    g: Any, input: Any, weight: Any, offset: Any, mask: Any, bias: Any,
    stride_h: int, stride_w: int, pad_h: int, pad_w: int, dil_h: int, dil_w: int,
    groups: int, offset_groups: int, use_mask: bool,
) -> Any:  # fmt: skip
    inputs = [input, weight, offset, bias] + ([mask] if use_mask else [])
    return g.op(
        "DeformConv",
        *inputs,
        dilations_i=[dil_h, dil_w],
        group_i=groups,
        kernel_shape_i=_kernel_shape(weight),
        offset_group_i=offset_groups,
        pads_i=[pad_h, pad_w, pad_h, pad_w],
        strides_i=[stride_h, stride_w],
    )


@symbolic_helper.parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
def _plugin_deform_conv(
    g: Any, input: Any, weight: Any, offset: Any, mask: Any, bias: Any,
    stride_h: int, stride_w: int, pad_h: int, pad_w: int, dil_h: int, dil_w: int,
    groups: int, offset_groups: int, use_mask: bool,
) -> Any:  # fmt: skip
    if not use_mask:
        raise RuntimeError("the dyhead plugin implements modulated deformable conv only (a mask is required)")
    _kernel_shape(weight)
    return g.op(
        f"{MDCN_SCHEMA.namespace}::{MDCN_SCHEMA.name}",
        input, offset, mask, weight, bias,
        stride_i=[stride_h, stride_w],
        padding_i=[pad_h, pad_w],
        dilation_i=[dil_h, dil_w],
        groups_i=groups,
        deformable_groups_i=offset_groups,
        plugin_namespace_s=MDCN_SCHEMA.namespace,
        plugin_version_s=MDCN_SCHEMA.version,
    )  # fmt: skip


@contextlib.contextmanager
def deform_conv_onnx_symbolic(flavour: str, opset: int) -> Iterator[None]:
    """Within this context, ``torch.onnx.export(..., dynamo=False)`` writes deformable convs
    as ``flavour`` nodes."""
    if flavour not in DCN_FLAVOURS:
        raise ValueError(f"unknown deformable-conv flavour {flavour!r}; choose one of {DCN_FLAVOURS}")
    if opset < MIN_OPSET:
        raise ValueError(f"DeformConv needs ONNX opset >= {MIN_OPSET}, got {opset}")
    symbolic = _onnx_deform_conv if flavour == "onnx" else _plugin_deform_conv
    torch.onnx.register_custom_op_symbolic(_OP, symbolic, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic(_OP, opset)
