"""The modulated deformable convolution (DCNv2) kernel in Triton, as an implicit GEMM.

The convolution is the product ``out[m, n] = sum_k A[m, k] * W[k, n]`` over

- ``m``: an output pixel ``(b, oy, ox)``, ``M = N * Ho * Wo``;
- ``n``: an output channel of the current group, ``Cout / groups``;
- ``k``: a kernel point ``(ky, kx)`` and an input channel of the group, ``(Cin / groups) * kh * kw``;

where ``A[m, k]`` is the mask-weighted bilinear sample of input channel ``c`` at the deformed
position of kernel point ``(ky, kx)`` for pixel ``m``. ``A`` never exists in memory: each program
gathers the four bilinear neighbours of its ``BLOCK_M`` pixels for ``BLOCK_K`` channels straight
into a tile (interpolated in float32, mask applied), casts it to the input dtype and feeds it to
``tl.dot`` with a float32 accumulator.

Offsets are read the way the official DCN kernels read them: image ``b``'s offsets start at
``b * offset_image_stride`` and are indexed as a ``(2 * G * kh * kw, Ho, Wo)`` block ((dy, dx) per
kernel point, as in torchvision and ONNX ``DeformConv``); the same for the mask. With an offset
map of the output's size the stride is ``2 * G * kh * kw * Ho * Wo`` and this is the ordinary
operator; with a larger map (DyHead's coarser level) it is the official "leading values" read.

The kernel uses no Triton scratch memory, and its arguments are ordered as TensorRT's AOT plugins
need them: the five input pointers, then int32 scalars, then the output pointer. The kernel body
is a plain function (no ``@triton.jit``) so that one module provides both a compiled
:class:`~triton.runtime.JITFunction` (CUDA, AOT PTX) and an interpreted one (CPU tensors under
``TRITON_INTERPRET=1``) in the same process.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import triton  # type: ignore[import-not-found,unused-ignore]
import triton.language as tl  # type: ignore[import-not-found,unused-ignore]

__all__ = [
    "DEFAULT_TILE",
    "INTERPRETER_TILE",
    "POINTER_ARGS",
    "SCALAR_ARGS",
    "TILES",
    "TileConfig",
    "compiled_kernel",
    "interpreted_kernel",
]

# The int32 scalar arguments, in kernel order (between the input pointers and the output pointer).
SCALAR_ARGS = (
    "batch", "in_channels", "height", "width", "out_channels", "out_height", "out_width",
    "offset_image_stride", "mask_image_stride",
    "stride_h", "stride_w", "pad_h", "pad_w", "dil_h", "dil_w", "groups", "deformable_groups",
)  # fmt: skip
POINTER_INPUTS = ("input", "offset", "mask", "weight", "bias")
POINTER_ARGS = (*(f"{name}_ptr" for name in POINTER_INPUTS), "output_ptr")


@dataclass(frozen=True)
class TileConfig:
    """One tiling of the implicit GEMM: pixels x output channels x input channels per step."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int = 1

    @property
    def name(self) -> str:
        return f"m{self.block_m}n{self.block_n}k{self.block_k}w{self.num_warps}s{self.num_stages}"


# Tactics offered to TensorRT and the PyTorch path. Each stays under 48 KiB of shared memory, the
# most a kernel launched without cudaFuncSetAttribute (as TensorRT launches AOT kernels) may use:
# one stage (software pipelining of the gathered tiles would double float32 tiles past that).
TILES = (
    TileConfig(64, 64, 32, 4),
    TileConfig(128, 64, 32, 4),
    TileConfig(64, 128, 32, 4),
    TileConfig(128, 128, 32, 8),
)
DEFAULT_TILE = TILES[1]
# Small tiles for the CPU interpreter: tl.dot needs every dimension >= 16.
INTERPRETER_TILE = TileConfig(32, 16, 16, 1)


def _mdcn_forward(
    input_ptr, offset_ptr, mask_ptr, weight_ptr, bias_ptr,
    batch, in_channels, height, width, out_channels, out_height, out_width,
    offset_image_stride, mask_image_stride,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups, deformable_groups,
    output_ptr,
    # constexprs in Triton's upper-case convention
    KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,  # noqa: N803
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,  # noqa: N803
):  # fmt: skip
    """One [BLOCK_M pixels, BLOCK_N output channels] tile of the output.

    Grid: (cdiv(batch * out_height * out_width, BLOCK_M), groups * cdiv(out_channels / groups, BLOCK_N)).
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    out_hw = out_height * out_width
    in_hw = height * width
    cout_per_group = out_channels // groups
    cin_per_group = in_channels // groups
    cin_per_dgroup = in_channels // deformable_groups
    tiles_per_group = (cout_per_group + BLOCK_N - 1) // BLOCK_N  # not tl.cdiv: see interpreted_kernel
    group = pid_n // tiles_per_group

    # Output channels of this tile (all inside one group).
    co_in_group = (pid_n % tiles_per_group) * BLOCK_N + tl.arange(0, BLOCK_N)
    co_valid = co_in_group < cout_per_group
    co = group * cout_per_group + co_in_group  # [BLOCK_N]

    # Output pixels of this tile.
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_valid = m < batch * out_hw
    b = m // out_hw
    pix = m % out_hw
    oy = pix // out_width
    ox = pix % out_width
    b64 = b.to(tl.int64)
    image_base = input_ptr + b64 * in_channels * in_hw  # [BLOCK_M] pointers
    offset_base = offset_ptr + b64 * offset_image_stride + pix
    mask_base = mask_ptr + b64 * mask_image_stride + pix

    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for kk in range(KH * KW):
        ky = kk // KW
        kx = kk % KW
        y_base = (oy * stride_h - pad_h + ky * dil_h).to(tl.float32)
        x_base = (ox * stride_w - pad_w + kx * dil_w).to(tl.float32)
        for dg in range(deformable_groups):
            # Input channels in both this conv group and this deformable group.
            c_lo = tl.maximum(group * cin_per_group, dg * cin_per_dgroup)
            c_hi = tl.minimum((group + 1) * cin_per_group, (dg + 1) * cin_per_dgroup)
            point = dg * KH * KW + kk
            dy = tl.load(offset_base + (2 * point) * out_hw, mask=m_valid, other=0.0).to(tl.float32)
            dx = tl.load(offset_base + (2 * point + 1) * out_hw, mask=m_valid, other=0.0).to(tl.float32)
            modulation = tl.load(mask_base + point * out_hw, mask=m_valid, other=0.0).to(tl.float32)
            y = y_base + dy
            x = x_base + dx
            # torchvision / official DCN bilinear sampling: zero outside (-1, H) x (-1, W), and
            # each of the four neighbours contributes only when it lies inside the image.
            inside = m_valid & (y > -1.0) & (y < height) & (x > -1.0) & (x < width)
            y_floor = tl.floor(y)
            x_floor = tl.floor(x)
            y0 = y_floor.to(tl.int32)
            x0 = x_floor.to(tl.int32)
            y1 = y0 + 1
            x1 = x0 + 1
            ly = y - y_floor
            lx = x - x_floor
            hy = 1.0 - ly
            hx = 1.0 - lx
            ok00 = inside & (y0 >= 0) & (x0 >= 0)
            ok01 = inside & (y0 >= 0) & (x1 <= width - 1)
            ok10 = inside & (y1 <= height - 1) & (x0 >= 0)
            ok11 = inside & (y1 <= height - 1) & (x1 <= width - 1)
            w00 = tl.where(ok00, hy * hx * modulation, 0.0)
            w01 = tl.where(ok01, hy * lx * modulation, 0.0)
            w10 = tl.where(ok10, ly * hx * modulation, 0.0)
            w11 = tl.where(ok11, ly * lx * modulation, 0.0)
            i00 = tl.where(ok00, y0 * width + x0, 0)
            i01 = tl.where(ok01, y0 * width + x1, 0)
            i10 = tl.where(ok10, y1 * width + x0, 0)
            i11 = tl.where(ok11, y1 * width + x1, 0)
            for c0 in range(c_lo, c_hi, BLOCK_K):
                c = c0 + tl.arange(0, BLOCK_K)
                c_valid = c < c_hi
                channel = image_base[:, None] + c[None, :] * in_hw  # [BLOCK_M, BLOCK_K] pointers
                v = w00[:, None] * tl.load(
                    channel + i00[:, None], mask=ok00[:, None] & c_valid[None, :], other=0.0
                ).to(tl.float32)
                v += w01[:, None] * tl.load(
                    channel + i01[:, None], mask=ok01[:, None] & c_valid[None, :], other=0.0
                ).to(tl.float32)
                v += w10[:, None] * tl.load(
                    channel + i10[:, None], mask=ok10[:, None] & c_valid[None, :], other=0.0
                ).to(tl.float32)
                v += w11[:, None] * tl.load(
                    channel + i11[:, None], mask=ok11[:, None] & c_valid[None, :], other=0.0
                ).to(tl.float32)
                # weight[co, c - group * cin_per_group, ky, kx] as a [BLOCK_K, BLOCK_N] tile
                w_ptrs = (
                    weight_ptr
                    + co[None, :] * (cin_per_group * KH * KW)
                    + (c - group * cin_per_group)[:, None] * (KH * KW)
                    + kk
                )
                w = tl.load(w_ptrs, mask=c_valid[:, None] & co_valid[None, :], other=0.0)
                acc = tl.dot(v.to(w.dtype), w, acc, input_precision=DOT_PRECISION)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + co, mask=co_valid, other=0.0).to(tl.float32)[None, :]
    out_ptrs = output_ptr + (b64 * out_channels * out_hw + pix)[:, None] + co[None, :].to(tl.int64) * out_hw
    tl.store(out_ptrs, acc.to(output_ptr.dtype.element_ty), mask=m_valid[:, None] & co_valid[None, :])


@cache
def compiled_kernel() -> Any:
    """The kernel as a compiled Triton function (CUDA launches and AOT compilation).

    Launched from PyTorch (and by the JIT plugin), it is compiled with no argument specialised:
    Triton would otherwise turn every int32 scalar equal to 1 (stride, dilation, groups...) into a
    constant and assume 16-divisible scalars and 16-byte aligned pointers, while the AOT PTX that
    TensorRT embeds is compiled from the bare signature (:func:`plugins.mdcn_ptx.kernel_signature`).
    So the GPU numerics and memcheck tests run the same machine code as an engine, and a JIT
    kernel is compiled once per dtype and tile, not again for new shapes.
    """
    from triton.runtime.jit import JITFunction  # type: ignore[import-not-found,unused-ignore]

    return JITFunction(
        _mdcn_forward, do_not_specialize=list(SCALAR_ARGS), do_not_specialize_on_alignment=list(POINTER_ARGS)
    )


@cache
def interpreted_kernel() -> Any:
    """The kernel run by Triton's CPU interpreter (numerical tests on CPU tensors).

    The kernel calls no ``@triton.jit`` helper (``tl.cdiv`` is one): those are compiled or
    interpreted depending on ``TRITON_INTERPRET`` when Triton is first imported, and this must
    work whenever that was.
    """
    from triton.runtime.interpreter import InterpretedFunction  # type: ignore[import-not-found,unused-ignore]

    return InterpretedFunction(_mdcn_forward)


def grid(batch: int, out_hw: int, out_channels: int, groups: int, tile: TileConfig) -> tuple[int, int]:
    """The launch grid for a problem and a tile."""
    return (
        triton.cdiv(batch * out_hw, tile.block_m),
        groups * triton.cdiv(out_channels // groups, tile.block_n),
    )
