"""Operators the detector needs beyond ``torch.nn``: modulated deformable convolution."""

from dyhead_serve.ops.deform_conv import (
    ModulatedDeformConv2d,
    conv_output_size,
    modulated_deform_conv2d,
    read_leading_offset_map,
)

__all__ = [
    "ModulatedDeformConv2d",
    "conv_output_size",
    "modulated_deform_conv2d",
    "read_leading_offset_map",
]
