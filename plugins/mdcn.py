"""PyTorch entry point of the Triton modulated deformable convolution kernel."""

from __future__ import annotations

import contextlib
import os

import torch
from torch import Tensor

from .mdcn_kernel import (
    DEFAULT_TILE,
    INTERPRETER_TILE,
    TileConfig,
    compiled_kernel,
    grid,
    interpreted_kernel,
)

__all__ = ["OFFSET_MODES", "dot_precision", "modulated_deform_conv"]

OFFSET_MODES = ("exact", "leading")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair[0], pair[1]


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: exact float32 products for float32 inputs (TF32 would lose
    ~1e-3), tensor-core products for 16-bit inputs."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _check(
    input: Tensor, offset: Tensor, mask: Tensor, weight: Tensor, bias: Tensor | None, groups: int
) -> int:
    """Validate shapes, dtypes and devices; return the number of deformable groups."""
    for name, t in (("input", input), ("offset", offset), ("mask", mask), ("weight", weight)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D, got shape {tuple(t.shape)}")
    if input.dtype not in _DTYPES:
        raise ValueError(f"input dtype must be one of {_DTYPES}, got {input.dtype}")
    tensors = [offset, mask, weight] + ([bias] if bias is not None else [])
    if any(t.dtype != input.dtype for t in tensors):
        raise ValueError("input, offset, mask, weight and bias must share one dtype")
    if any(t.device != input.device for t in tensors):
        raise ValueError("input, offset, mask, weight and bias must be on one device")
    n, cin = input.shape[:2]
    cout, cin_g, kh, kw = weight.shape
    if groups < 1 or cin % groups or cout % groups or cin_g != cin // groups:
        raise ValueError(
            f"weight {tuple(weight.shape)} does not fit input channels {cin} with groups={groups}: "
            f"expected [Cout, {cin // max(groups, 1)}, kh, kw] with Cout divisible by groups"
        )
    if offset.shape[1] % (2 * kh * kw) or offset.shape[1] == 0:
        raise ValueError(f"offset must have 2 * G * {kh} * {kw} channels, got {offset.shape[1]}")
    deformable_groups = offset.shape[1] // (2 * kh * kw)
    if cin % deformable_groups:
        raise ValueError(f"input channels {cin} are not divisible by {deformable_groups} deformable groups")
    if mask.shape[1] != deformable_groups * kh * kw:
        raise ValueError(f"mask must have {deformable_groups * kh * kw} channels, got {mask.shape[1]}")
    if offset.shape[0] != n or mask.shape[0] != n:
        raise ValueError("input, offset and mask must have the same batch size")
    if bias is not None and tuple(bias.shape) != (cout,):
        raise ValueError(f"bias must have shape ({cout},), got {tuple(bias.shape)}")
    return deformable_groups


def modulated_deform_conv(
    input: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    offset_mode: str = "exact",
    *,
    tile: TileConfig | None = None,
) -> Tensor:
    """Modulated deformable convolution (DCNv2) computed by the Triton kernel.

    Runs on CUDA tensors; on CPU tensors only under ``TRITON_INTERPRET=1`` (Triton's interpreter,
    for tests). Interpolation and accumulation are in float32 whatever the input dtype.

    Args:
        input: Tensor[N, Cin, H, W], float32, float16 or bfloat16 (bfloat16 on GPUs with it).
        offset: Tensor[N, 2 * G * kh * kw, Hm, Wm], (dy, dx) per kernel point, as in torchvision.
        mask: Tensor[N, G * kh * kw, Hm, Wm], already passed through a sigmoid.
        weight: Tensor[Cout, Cin / groups, kh, kw].
        bias: Tensor[Cout] or None.
        stride, padding, dilation: ints or (h, w) pairs.
        groups: convolution groups.
        offset_mode: ``"exact"``: the offset and mask maps have the output's size. ``"leading"``:
            they may be larger, and each image's leading ``2*G*kh*kw*Ho*Wo`` offset and
            ``G*kh*kw*Ho*Wo`` mask values are read as ``(.., Ho, Wo)`` blocks, as the official
            DyHead CUDA kernel does (identical to "exact" when the sizes match).
        tile: GEMM tiling (default: a tile for the device).

    Returns:
        Tensor[N, Cout, Ho, Wo] of the input's dtype.
    """
    if offset_mode not in OFFSET_MODES:
        raise ValueError(f"offset_mode must be one of {OFFSET_MODES}, got {offset_mode!r}")
    stride_hw, padding_hw, dilation_hw = (
        _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    )  # fmt: skip
    if min(stride_hw) < 1 or min(dilation_hw) < 1 or min(padding_hw) < 0:
        raise ValueError("stride and dilation must be >= 1 and padding >= 0")
    deformable_groups = _check(input, offset, mask, weight, bias, groups)
    n, cin, h, w = input.shape
    cout, _, kh, kw = weight.shape
    out_h = (h + 2 * padding_hw[0] - dilation_hw[0] * (kh - 1) - 1) // stride_hw[0] + 1
    out_w = (w + 2 * padding_hw[1] - dilation_hw[1] * (kw - 1) - 1) // stride_hw[1] + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"input {h}x{w} is too small for this kernel, stride and padding")
    map_h, map_w = offset.shape[-2:]
    if tuple(mask.shape[-2:]) != (map_h, map_w):
        raise ValueError(f"offset map {map_h}x{map_w} and mask map {tuple(mask.shape[-2:])} differ in size")
    if offset_mode == "exact" and (map_h, map_w) != (out_h, out_w):
        raise ValueError(
            f"offset map {map_h}x{map_w} does not match the output {out_h}x{out_w}; "
            "use offset_mode='leading' for the official larger-map read"
        )
    if map_h * map_w < out_h * out_w:
        raise ValueError(f"offset map {map_h}x{map_w} is smaller than the output {out_h}x{out_w}")

    if input.device.type == "cuda":
        kernel = compiled_kernel()
        tile = tile or DEFAULT_TILE
    elif input.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        kernel = interpreted_kernel()
        tile = tile or INTERPRETER_TILE
    else:
        raise ValueError(
            f"the Triton kernel runs on CUDA tensors (or on CPU tensors with TRITON_INTERPRET=1), "
            f"got {input.device.type} tensors; use dyhead_serve.ops' torchvision path on this device"
        )
    input, offset, mask, weight = (t.contiguous() for t in (input, offset, mask, weight))
    bias_arg = bias.contiguous() if bias is not None else weight  # any pointer; never read
    output = torch.empty(n, cout, out_h, out_w, dtype=input.dtype, device=input.device)
    if output.numel() == 0:
        return output
    with torch.cuda.device(input.device) if input.is_cuda else contextlib.nullcontext():
        kernel[grid(n, out_h * out_w, cout, groups, tile)](
            input, offset, mask, weight, bias_arg,
            n, cin, h, w, cout, out_h, out_w,
            offset.shape[1] * map_h * map_w, mask.shape[1] * map_h * map_w,
            stride_hw[0], stride_hw[1], padding_hw[0], padding_hw[1], dilation_hw[0], dilation_hw[1],
            groups, deformable_groups,
            output,
            KH=kh, KW=kw, HAS_BIAS=bias is not None, DOT_PRECISION=dot_precision(input.dtype),
            BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, BLOCK_K=tile.block_k,
            num_warps=tile.num_warps, num_stages=tile.num_stages, enable_fp_fusion=True,
        )  # fmt: skip
    return output
