"""ONNX ``DeformConv`` in OpenVINO: a conversion for its ONNX reader, which has none.

ONNX's ``DeformConv`` (opset 19) takes ``X, W, offset[, B[, mask]]`` with the attributes
``dilations, group, kernel_shape, offset_group, pads, strides``; its offsets are ``(dy, dx)`` pairs
per kernel tap, torchvision's layout. It becomes OpenVINO's opset-8 ``DeformableConvolution``
(input, offsets, weights[, mask]) plus a per-channel ``Add`` for the bias.

``bilinear_interpolation_pad=True`` is what makes the two agree: torchvision (and ONNX Runtime)
interpolate a sample that falls less than one pixel outside the feature map between its pixels
inside and zeros outside, which OpenVINO does only with this flag (its default reads such a
sample as zero). OpenVINO's own PyTorch frontend translates ``torchvision::deform_conv2d`` with
the flag set. Without it an ATSS R-50's outputs differ from torch's by up to 0.08.

This module imports ``openvino`` when called, never at import time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ONNX_OP", "deform_conv_extension"]

ONNX_OP = "DeformConv"


def _attribute(context: Any, name: str, default: Any) -> Any:
    return context.get_attribute(name) if context.has_attribute(name) else default


def _translate(context: Any) -> Any:
    """One ONNX ``DeformConv`` node (an OpenVINO ONNX-frontend ``NodeContext``) -> its outputs."""
    import openvino.opset8 as ops

    inputs = context.get_input_size()
    data, weight, offset = context.get_input(0), context.get_input(1), context.get_input(2)
    pads = [int(p) for p in _attribute(context, "pads", [0, 0, 0, 0])]  # [top, left, bottom, right]
    mask = context.get_input(4) if inputs > 4 else None
    output = ops.deformable_convolution(
        data,
        offset,
        weight,
        strides=[int(s) for s in _attribute(context, "strides", [1, 1])],
        pads_begin=pads[:2],
        pads_end=pads[2:],
        dilations=[int(d) for d in _attribute(context, "dilations", [1, 1])],
        mask=mask,
        group=int(_attribute(context, "group", 1)),
        deformable_group=int(_attribute(context, "offset_group", 1)),
        bilinear_interpolation_pad=True,
    )
    if inputs > 3:
        # B is [Cout]: broadcast over [N, Cout, H, W].
        bias = ops.unsqueeze(context.get_input(3), ops.constant(np.array([0, 2, 3], dtype=np.int64)))
        output = ops.add(output, bias)
    return output.outputs()


def deform_conv_extension() -> Any:
    """The ``openvino.frontend.ConversionExtension`` to add to a ``Core`` before ``read_model``."""
    from openvino.frontend import ConversionExtension

    return ConversionExtension(ONNX_OP, _translate)
