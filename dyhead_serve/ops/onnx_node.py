"""What a deformable convolution becomes in an ONNX graph, whichever exporter writes it.

``torchvision::deform_conv2d`` is written in one of two flavours, chosen at export time (the
model's ``forward`` is the same for both):

- ``"onnx"``: the standard opset-19 ``DeformConv`` node, run by ONNX Runtime and parsed by
  TensorRT >= 10.1 into its own implementation.
- ``"plugin"``: a node of our TensorRT plugin (:data:`dyhead_serve.plugins.schema.MDCN_SCHEMA`),
  carrying the ``plugin_namespace`` and ``plugin_version`` attributes TensorRT's ONNX parser uses
  to route it to the registered plugin.

Both exporters render the node this module describes: the TorchScript exporter through
:mod:`dyhead_serve.ops.onnx_symbolic`, the ``torch.export`` exporter through
:mod:`dyhead_serve.ops.onnx_translation`, so their graphs cannot disagree on a name or an
attribute. The official larger-offset-map read happens in plain tensor ops before the deformable
conv (:func:`dyhead_serve.ops.deform_conv.read_leading_offset_map`), so it is part of either graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from dyhead_serve.plugins.schema import MDCN_SCHEMA

__all__ = [
    "DCN_FLAVOURS",
    "MIN_OPSET",
    "DeformConvNode",
    "check_flavour",
    "deform_conv_node",
    "torchvision_deform_conv_node",
]

MIN_OPSET = 19  # the first opset with DeformConv
DCN_FLAVOURS = ("onnx", "plugin")

AttributeValue = int | list[int] | str
T = TypeVar("T")


@dataclass(frozen=True)
class DeformConvNode:
    """One deformable convolution as an ONNX node.

    ``inputs`` names torchvision's arguments (``input``, ``weight``, ``offset``, ``mask``,
    ``bias``) in the order the node takes them; ``domain`` is ``""`` for the standard opset.
    """

    domain: str
    op_type: str
    inputs: tuple[str, ...]
    attributes: dict[str, AttributeValue]

    def arrange(self, input: T, weight: T, offset: T, mask: T, bias: T) -> list[T]:
        """torchvision's tensor arguments (graph values of either exporter) in the node's order."""
        tensors = {"input": input, "weight": weight, "offset": offset, "mask": mask, "bias": bias}
        return [tensors[name] for name in self.inputs]


def check_flavour(flavour: str, opset: int) -> None:
    """Raise ValueError for an unknown flavour or an opset without ``DeformConv``."""
    if flavour not in DCN_FLAVOURS:
        raise ValueError(f"unknown deformable-conv flavour {flavour!r}; choose one of {DCN_FLAVOURS}")
    if opset < MIN_OPSET:
        raise ValueError(f"DeformConv needs ONNX opset >= {MIN_OPSET}, got {opset}")


def deform_conv_node(
    flavour: str,
    *,
    kernel_shape: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    offset_groups: int,
    use_mask: bool,
) -> DeformConvNode:
    """The node for one ``torchvision::deform_conv2d`` call (its arguments, ``kernel_shape`` from
    the weight's ``[Cout, Cin / groups, kh, kw]``).

    Raises:
        ValueError: an unknown flavour, or the plugin flavour without a mask (the plugin
            implements modulated deformable convolution only).
    """
    if flavour == "onnx":
        return DeformConvNode(
            domain="",
            op_type="DeformConv",
            inputs=("input", "weight", "offset", "bias") + (("mask",) if use_mask else ()),
            attributes={
                "dilations": list(dilation),
                "group": groups,
                "kernel_shape": list(kernel_shape),
                "offset_group": offset_groups,
                "pads": [padding[0], padding[1], padding[0], padding[1]],
                "strides": list(stride),
            },
        )
    if flavour == "plugin":
        if not use_mask:
            raise ValueError("the dyhead plugin implements modulated deformable conv only (it needs a mask)")
        return DeformConvNode(
            domain=MDCN_SCHEMA.namespace,
            op_type=MDCN_SCHEMA.name,
            inputs=("input", "offset", "mask", "weight", "bias"),  # MDCN_SCHEMA.inputs' order
            attributes={
                "stride": list(stride),
                "padding": list(padding),
                "dilation": list(dilation),
                "groups": groups,
                "deformable_groups": offset_groups,
                "plugin_namespace": MDCN_SCHEMA.namespace,
                "plugin_version": MDCN_SCHEMA.version,
            },
        )
    raise ValueError(f"unknown deformable-conv flavour {flavour!r}; choose one of {DCN_FLAVOURS}")


def torchvision_deform_conv_node(
    flavour: str, kernel_shape: tuple[int, int], *scalars: int | bool
) -> DeformConvNode:
    """:func:`deform_conv_node` from ``torchvision::deform_conv2d``'s integer arguments, in its
    schema's order: stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups,
    offset_groups, use_mask."""
    stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups, offset_groups, use_mask = scalars
    return deform_conv_node(
        flavour,
        kernel_shape=kernel_shape,
        stride=(int(stride_h), int(stride_w)),
        padding=(int(pad_h), int(pad_w)),
        dilation=(int(dilation_h), int(dilation_w)),
        groups=int(groups),
        offset_groups=int(offset_groups),
        use_mask=bool(use_mask),
    )
