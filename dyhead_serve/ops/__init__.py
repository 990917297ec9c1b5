"""Operators the detector needs beyond ``torch.nn``: modulated deformable convolution."""

from dyhead_serve.ops.dcn_kernel import DCN_KERNELS, get_dcn_kernel, set_dcn_kernel, use_dcn_kernel
from dyhead_serve.ops.deform_conv import (
    ModulatedDeformConv2d,
    check_finite_offsets,
    conv_output_size,
    modulated_deform_conv2d,
    read_leading_offset_map,
)

__all__ = [
    "DCN_KERNELS",
    "ModulatedDeformConv2d",
    "check_finite_offsets",
    "conv_output_size",
    "get_dcn_kernel",
    "modulated_deform_conv2d",
    "read_leading_offset_map",
    "set_dcn_kernel",
    "use_dcn_kernel",
]
