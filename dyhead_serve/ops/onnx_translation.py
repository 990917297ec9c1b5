"""The ``torch.export`` exporter's translation of ``torchvision::deform_conv2d``
(``torch.onnx.export(..., dynamo=True, custom_translation_table=...)``): an ONNX Script function
that writes the node :mod:`dyhead_serve.ops.onnx_node` describes, in either flavour.

In an exported program the op appears as ``torch.ops.torchvision.deform_conv2d.default`` with
torchvision's arguments (input, weight, offset, mask, bias, then the integer parameters), the
leading offset read before it as ordinary ATen ops on symbolic sizes.

The plugin flavour's node belongs to a domain ONNX does not know; ONNX Script records a node only
from an ``onnx.defs.OpSchema``, so one is declared here from
:data:`dyhead_serve.plugins.schema.MDCN_SCHEMA` (it is not registered with ONNX: the checker and
shape inference still see an unknown op, as for the TorchScript exporter's graph).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import onnx
import torch
import torchvision  # noqa: F401  (registers torch.ops.torchvision)
from onnxscript import values

from dyhead_serve.ops.onnx_node import check_flavour, torchvision_deform_conv_node
from dyhead_serve.plugins.schema import MDCN_SCHEMA

__all__ = ["deform_conv_translation_table"]

_FLOAT_TYPES = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"]
_ATTRIBUTE_TYPES = {
    "ints": onnx.defs.OpSchema.AttrType.INTS,
    "int": onnx.defs.OpSchema.AttrType.INT,
    "string": onnx.defs.OpSchema.AttrType.STRING,
}
_ROUTING_ATTRIBUTES = ("plugin_namespace", "plugin_version")  # read by TensorRT's ONNX parser


@functools.cache
def _plugin_op() -> values.Op:
    """The plugin node's ONNX Script op: MDCN_SCHEMA's inputs, outputs and attributes, plus the
    routing attributes."""
    param, attr = onnx.defs.OpSchema.FormalParameter, onnx.defs.OpSchema.Attribute
    attributes = [attr(a.name, _ATTRIBUTE_TYPES[a.kind], "") for a in MDCN_SCHEMA.attributes]
    attributes += [attr(name, onnx.defs.OpSchema.AttrType.STRING, "") for name in _ROUTING_ATTRIBUTES]
    schema = onnx.defs.OpSchema(
        MDCN_SCHEMA.name,
        MDCN_SCHEMA.namespace,
        int(MDCN_SCHEMA.version),
        inputs=[param(name, "T") for name in MDCN_SCHEMA.inputs],
        outputs=[param(name, "T") for name in MDCN_SCHEMA.outputs],
        type_constraints=[("T", _FLOAT_TYPES, "floating-point tensors")],
        attributes=attributes,
    )
    return values.Op(values.Opset(MDCN_SCHEMA.namespace, int(MDCN_SCHEMA.version)), MDCN_SCHEMA.name, schema)


def _op(flavour: str, opset: int, domain: str, op_type: str) -> Any:
    if flavour == "plugin":
        return _plugin_op()
    return getattr(values.Opset(domain, opset), op_type)


def _kernel_shape(weight: Any) -> tuple[int, int]:
    shape = getattr(weight, "shape", None)
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]):
        raise RuntimeError(
            f"deform_conv2d export needs a weight of known shape [Cout, Cin/g, kh, kw], not {shape}"
        )
    return int(shape[2]), int(shape[3])


def _translation(flavour: str, opset: int) -> Callable[..., Any]:
    # Argument order and names as torchvision::deform_conv2d's schema; the integers are attributes.
    def deform_conv2d(
        input: Any, weight: Any, offset: Any, mask: Any, bias: Any,
        stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int, dilation_w: int,
        groups: int, offset_groups: int, use_mask: bool,
    ) -> Any:  # fmt: skip
        node = torchvision_deform_conv_node(
            flavour, _kernel_shape(weight), stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
            groups, offset_groups, use_mask,
        )  # fmt: skip
        op = _op(flavour, opset, node.domain, node.op_type)
        return op(*node.arrange(input, weight, offset, mask, bias), **node.attributes)

    return deform_conv2d


def deform_conv_translation_table(flavour: str, opset: int) -> dict[Any, Callable[..., Any]]:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)`` that writes
    deformable convs as ``flavour`` nodes (see :mod:`dyhead_serve.ops.onnx_node`).

    Raises:
        ValueError: an unknown flavour or an opset below 19.
    """
    check_flavour(flavour, opset)
    return {torch.ops.torchvision.deform_conv2d.default: _translation(flavour, opset)}
