"""The TorchScript exporter's symbolic for ``torchvision::deform_conv2d``
(``torch.onnx.export(..., dynamo=False)``): writes the node :mod:`dyhead_serve.ops.onnx_node`
describes, in either flavour.

The TorchScript exporter is deprecated since PyTorch 2.9; :mod:`dyhead_serve.ops.onnx_translation`
writes the same nodes for the ``torch.export`` exporter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.onnx import symbolic_helper

from dyhead_serve.ops.onnx_node import check_flavour, torchvision_deform_conv_node

__all__ = ["deform_conv_onnx_symbolic"]

_OP = "torchvision::deform_conv2d"
_TYPE_SUFFIX = {int: "i", list: "i", str: "s"}  # TorchScript's g.op attribute-kind suffixes


def _kernel_shape(weight: Any) -> tuple[int, int]:
    sizes = symbolic_helper._get_tensor_sizes(weight)
    if sizes is None or len(sizes) != 4 or any(s is None for s in sizes[2:]):
        raise RuntimeError("deform_conv2d export needs a weight of known shape [Cout, Cin/g, kh, kw]")
    return int(sizes[2]), int(sizes[3])


def _symbolic(flavour: str) -> Any:
    @symbolic_helper.parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
    def deform_conv2d(
        g: Any, input: Any, weight: Any, offset: Any, mask: Any, bias: Any,
        stride_h: int, stride_w: int, pad_h: int, pad_w: int, dil_h: int, dil_w: int,
        groups: int, offset_groups: int, use_mask: bool,
    ) -> Any:  # fmt: skip
        node = torchvision_deform_conv_node(
            flavour, _kernel_shape(weight), stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
            groups, offset_groups, use_mask,
        )  # fmt: skip
        attributes = {f"{k}_{_TYPE_SUFFIX[type(v)]}": v for k, v in node.attributes.items()}
        name = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
        return g.op(name, *node.arrange(input, weight, offset, mask, bias), **attributes)

    return deform_conv2d


@contextlib.contextmanager
def deform_conv_onnx_symbolic(flavour: str, opset: int) -> Iterator[None]:
    """Within this context, ``torch.onnx.export(..., dynamo=False)`` writes deformable convs
    as ``flavour`` nodes (see :mod:`dyhead_serve.ops.onnx_node`)."""
    check_flavour(flavour, opset)
    torch.onnx.register_custom_op_symbolic(_OP, _symbolic(flavour), opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic(_OP, opset)
