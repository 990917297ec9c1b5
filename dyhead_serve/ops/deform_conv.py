"""Modulated deformable convolution (DCNv2) with the official DyHead offset-map semantics.

The official DyHead CUDA kernel takes, for every image ``b``, the memory that starts at
``offset[b]`` and reads it as a contiguous ``(2 * kh * kw, Ho, Wo)`` block, where ``Ho, Wo`` is
the size of the convolution's *output*; the same holds for the mask. When the offset map has the
output's size this is the ordinary operator. DyHead also applies one level's offset map to the
next coarser level, whose output is smaller than the map: the kernel then reads the leading
``18 * Ho * Wo`` offset values and ``9 * Ho * Wo`` mask values of each image's buffer, and trained
official weights depend on that. :func:`read_leading_offset_map` reproduces the read exactly.

In training, :class:`ModulatedDeformConv2d` first checks that its offsets and masks are finite
(:func:`check_finite_offsets`): torchvision's CPU ``deform_conv2d`` crashes the process on NaN
or infinite offsets, where a diverged run must stop with an error. In eval mode, the mode the
ONNX export traces, nothing is checked.

Training on the CPU (autograd recording, CPU tensors, one group) runs
:func:`deform_conv2d_by_sampling` instead of torchvision: the same bilinear sampling written with
``grid_sample`` and a matrix product, 11 to 15 times faster forward + backward than torchvision's
CPU ``deform_conv2d`` (whose backward took 80% of a CPU training step). It agrees with torchvision
to float32 rounding of the sampling coordinates (about 1e-5 relative, gradients included); it is
never used for inference, so CPU predictions stay bit-identical to the official model's. Its
sampled columns are recomputed in backward (activation checkpointing) instead of being kept, so
peak memory stays close to torchvision's. ``DYHEAD_DCN_KERNEL=torchvision``
(:mod:`dyhead_serve.ops.dcn_kernel`) turns it off.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair
from torch.utils.checkpoint import checkpoint
from torchvision.ops import deform_conv2d

from dyhead_serve.ops.dcn_kernel import sampling_applies, triton_applies

__all__ = [
    "ModulatedDeformConv2d",
    "check_finite_offsets",
    "conv_output_size",
    "deform_conv2d_by_sampling",
    "kernel_dtype",
    "modulated_deform_conv2d",
    "read_leading_offset_map",
]


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Spatial output size of a convolution along one axis."""
    return (size + 2 * padding - (dilation * (kernel - 1) + 1)) // stride + 1


def check_finite_offsets(offset: Tensor, mask: Tensor | None, layer: str) -> None:
    """Raise if ``offset`` or ``mask`` holds NaN or infinity (one device sync).

    Args:
        offset: Tensor[N, 2 * G * kh * kw, Hm, Wm].
        mask: Tensor[N, G * kh * kw, Hm, Wm], or None for an unmodulated convolution.
        layer: names the convolution in the message.

    Raises:
        FloatingPointError: a value is not finite. torchvision's CPU ``deform_conv2d`` would
            crash the process (segmentation fault) on it instead of propagating NaN.
    """
    finite = torch.isfinite(offset).all()
    if mask is not None:
        finite = finite & torch.isfinite(mask).all()
    if not bool(finite):
        what = "offsets or masks" if mask is not None else "offsets"
        raise FloatingPointError(
            f"non-finite offsets in deformable conv {layer}: its {what} hold NaN or infinity "
            "(the training has diverged)"
        )


def read_leading_offset_map(values: Tensor, out_h: int, out_w: int) -> Tensor:
    """Read a per-image map the way the official kernel does.

    Args:
        values: Tensor[N, C, H, W] with ``H * W >= out_h * out_w`` (offsets: C = 2*kh*kw,
            masks: C = kh*kw).
        out_h, out_w: the convolution's output size.

    Returns:
        Tensor[N, C, out_h, out_w]: for each image, its leading ``C * out_h * out_w`` values in
        memory (channel-major) order. Identity when the map already has the output's size.
    """
    n, c, h, w = values.shape
    if (h, w) == (out_h, out_w):
        return values
    if h * w < out_h * out_w:
        raise ValueError(
            f"offset/mask map of size {h}x{w} is smaller than the convolution output "
            f"{out_h}x{out_w}; it must have at least as many positions"
        )
    return values.reshape(n, c * h * w)[:, : c * out_h * out_w].reshape(n, c, out_h, out_w)


def deform_conv2d_by_sampling(
    input: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    """torchvision's modulated ``deform_conv2d`` (one group, one offset group) as ``grid_sample``
    plus a matrix product, for fast CPU autograd.

    Args:
        input: Tensor[N, Cin, H, W].
        offset: Tensor[N, 2 * kh * kw, Ho, Wo], (dy, dx) per kernel point.
        mask: Tensor[N, kh * kw, Ho, Wo].
        weight: Tensor[Cout, Cin, kh, kw].
        bias: Tensor[Cout] or None.

    Returns:
        Tensor[N, Cout, Ho, Wo]. Kernel point ``k`` of output ``(i, j)`` samples the input at
        ``(i * stride - pad + ky * dilation + dy, j * stride - pad + kx * dilation + dx)``
        bilinearly, each of the four neighbours outside the image counting as zero: exactly
        ``grid_sample``'s ``zeros`` padding with ``align_corners=False``.
    """
    n, cin, h, w = input.shape
    cout, _, kh, kw = weight.shape
    k = kh * kw
    out_h, out_w = offset.shape[-2:]

    def arange(size: int) -> Tensor:
        return torch.arange(size, dtype=input.dtype, device=input.device)

    ky = (arange(kh) * dilation[0]).repeat_interleave(kw).view(1, k, 1, 1)
    kx = (arange(kw) * dilation[1]).repeat(kh).view(1, k, 1, 1)
    rows = (arange(out_h) * stride[0] - padding[0]).view(1, 1, out_h, 1)
    cols = (arange(out_w) * stride[1] - padding[1]).view(1, 1, 1, out_w)
    pairs = offset.reshape(n, k, 2, out_h, out_w)
    # Pixel p -> grid_sample's normalised (2p + 1) / size - 1 (align_corners=False).
    grid_y = (rows + ky + pairs[:, :, 0]) * (2.0 / h) + (1.0 / h - 1.0)  # [N, K, Ho, Wo]
    grid_x = (cols + kx + pairs[:, :, 1]) * (2.0 / w) + (1.0 / w - 1.0)  # [N, K, Ho, Wo]
    grid = torch.stack([grid_x, grid_y], dim=-1).view(n, k * out_h, out_w, 2)
    sampled = F.grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    columns = sampled.view(n, cin, k, out_h * out_w) * mask.reshape(n, 1, k, out_h * out_w)
    out = torch.matmul(weight.reshape(1, cout, cin * k), columns.view(n, cin * k, out_h * out_w))
    out = out.view(n, cout, out_h, out_w)
    return out if bias is None else out + bias.view(1, cout, 1, 1)


def kernel_dtype(input: Tensor) -> torch.dtype:
    """The dtype the Triton kernel runs a deformable conv on ``input`` in: autocast's when autocast
    is on for the input's device (float16 activations, float32 weights and offsets all cast to it,
    as autocast casts a convolution's operands), else the input's own.
    """
    device_type = input.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return input.dtype


def modulated_deform_conv2d(
    input: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
) -> Tensor:
    """Modulated deformable convolution with the official larger-offset-map read.

    Args:
        input: Tensor[N, Cin, H, W].
        offset: Tensor[N, 2 * G * kh * kw, Hm, Wm], (dy, dx) per kernel point, as in torchvision
            and ONNX ``DeformConv``. ``Hm * Wm`` may exceed the output size (see module doc).
        mask: Tensor[N, G * kh * kw, Hm, Wm], already passed through a sigmoid.
        weight: Tensor[Cout, Cin / groups, kh, kw].
        bias: Tensor[Cout] or None.

    Returns:
        Tensor[N, Cout, Ho, Wo].

    On CUDA, with the Triton kernel selected (:mod:`dyhead_serve.ops.dcn_kernel`), the kernel of
    :mod:`dyhead_serve.plugins` runs instead of torchvision, in :func:`kernel_dtype`; it reads larger
    maps the same way by itself.
    On the CPU with autograd recording, :func:`deform_conv2d_by_sampling` runs (see module doc).
    """
    stride_hw, padding_hw, dilation_hw = _pair(stride), _pair(padding), _pair(dilation)
    if triton_applies(input):
        from dyhead_serve import plugins

        groups = input.shape[1] // weight.shape[1]
        dtype = kernel_dtype(input)
        result: Tensor = plugins.modulated_deform_conv(
            input.to(dtype),
            offset.to(dtype),
            mask.to(dtype),
            weight.to(dtype),
            bias.to(dtype) if bias is not None else None,
            stride_hw,
            padding_hw,
            dilation_hw,
            groups,
            offset_mode="leading",
        )
        return result
    kh, kw = weight.shape[-2:]
    out_h = conv_output_size(input.shape[-2], kh, stride_hw[0], padding_hw[0], dilation_hw[0])
    out_w = conv_output_size(input.shape[-1], kw, stride_hw[1], padding_hw[1], dilation_hw[1])
    offset = read_leading_offset_map(offset, out_h, out_w)
    mask = read_leading_offset_map(mask, out_h, out_w)
    if sampling_applies(input, offset, weight, (input, offset, mask, weight, bias)):
        # Recomputed in backward rather than kept: the sampled columns (Cin * kh * kw values per
        # output position) would otherwise double a CPU training step's peak memory.
        args = (input, offset, mask, weight, bias, stride_hw, padding_hw, dilation_hw)
        sampled: Tensor = checkpoint(
            deform_conv2d_by_sampling, *args, use_reentrant=False, preserve_rng_state=False
        )
        return sampled
    return deform_conv2d(
        input,
        offset,
        weight,
        bias,
        stride=stride_hw,
        padding=padding_hw,
        dilation=dilation_hw,
        mask=mask,
    )


class ModulatedDeformConv2d(nn.Module):
    """A modulated deformable convolution layer whose offsets and masks are given to ``forward``.

    Parameters are named ``weight`` and ``bias`` as in the official ``ModulatedDeformConv``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if in_channels % groups != 0 or out_channels % groups != 0:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                f"divisible by groups ({groups})"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, input: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        """Tensor[N, Cin, H, W] -> Tensor[N, Cout, Ho, Wo]; see :func:`modulated_deform_conv2d`.

        Raises:
            FloatingPointError: in training mode, ``offset`` or ``mask`` is not finite.
        """
        if self.training:
            check_finite_offsets(offset, mask, f"ModulatedDeformConv2d({self.extra_repr()})")
        return modulated_deform_conv2d(
            input, offset, mask, self.weight, self.bias, self.stride, self.padding, self.dilation
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, bias={self.bias is not None}"
        )
