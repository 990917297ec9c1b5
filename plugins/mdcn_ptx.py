"""Ahead-of-time compilation of the kernel to PTX, as TensorRT's AOT plugin embeds it.

Triton compiles for a given :class:`GPUTarget` without a GPU, so this runs on any machine with
Triton installed. The result is checked for what an AOT plugin cannot provide: Triton scratch
memory (TensorRT passes no scratch buffer) and more than 48 KiB of shared memory per block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .mdcn_kernel import POINTER_INPUTS, SCALAR_ARGS, TileConfig, compiled_kernel

__all__ = [
    "DTYPES",
    "MAX_SHARED_BYTES",
    "PTX_VERSION",
    "CompiledPTX",
    "PTXError",
    "compile_ptx",
    "entry_params",
    "kernel_signature",
]

DTYPES = ("fp32", "fp16", "bf16")  # Triton's names
MAX_SHARED_BYTES = 48 * 1024
# PTX ISA 8.0 (CUDA 12.0, the first with sm_90a): the driver JIT-compiles the embedded PTX, so an
# older ISA than Triton's default (its bundled ptxas's newest) runs on every CUDA 12+ driver.
PTX_VERSION = 80
_ENTRY = re.compile(r"\.entry\s+(\w+)\s*\((.*?)\)", re.DOTALL)


class PTXError(RuntimeError):
    """The kernel cannot be compiled into a form an AOT plugin can launch."""


@dataclass(frozen=True)
class CompiledPTX:
    """A compiled kernel: what TensorRT's ``aot_impl`` returns, plus its launch needs."""

    name: str
    ptx: str
    shared_bytes: int
    num_warps: int
    arch: int

    @property
    def threads_per_block(self) -> int:
        return self.num_warps * 32


def kernel_signature(
    dtype: str, tile: TileConfig, kernel_size: tuple[int, int], has_bias: bool, dot_precision: str
) -> tuple[dict[str, str], dict[str, Any]]:
    """Triton signature (argument name -> type) and constexpr values for one specialisation.

    Input pointers first, then the int32 scalars, then the output pointer: the order TensorRT
    passes AOT kernel arguments in.
    """
    if dtype not in DTYPES:
        raise PTXError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    signature = {f"{name}_ptr": f"*{dtype}" for name in POINTER_INPUTS}
    signature.update({name: "i32" for name in SCALAR_ARGS})
    signature["output_ptr"] = f"*{dtype}"
    constexprs: dict[str, Any] = {
        "KH": kernel_size[0],
        "KW": kernel_size[1],
        "HAS_BIAS": has_bias,
        "DOT_PRECISION": dot_precision,
        "BLOCK_M": tile.block_m,
        "BLOCK_N": tile.block_n,
        "BLOCK_K": tile.block_k,
    }
    signature.update({name: "constexpr" for name in constexprs})
    return signature, constexprs


def compile_ptx(
    dtype: str,
    tile: TileConfig,
    *,
    kernel_size: tuple[int, int] = (3, 3),
    has_bias: bool = True,
    arch: int | None = None,
    ptx_version: int = PTX_VERSION,
) -> CompiledPTX:
    """Compile the kernel to PTX.

    Args:
        dtype: ``fp32``, ``fp16`` or ``bf16`` (bf16 needs sm_80 or newer).
        tile: the GEMM tiling.
        kernel_size: (kh, kw).
        has_bias: whether the bias pointer is read.
        arch: compute capability as an int (80, 86, 89, 90, ...); default: the current GPU's.
        ptx_version: PTX ISA version as an int (80: 8.0).
    """
    import triton  # type: ignore[import-not-found,unused-ignore]
    from triton.backends.compiler import GPUTarget  # type: ignore[import-not-found,unused-ignore]

    precision = "ieee" if dtype == "fp32" else "tf32"
    signature, constexprs = kernel_signature(dtype, tile, kernel_size, has_bias, precision)
    source = triton.compiler.ASTSource(fn=compiled_kernel(), signature=signature, constexprs=constexprs)
    target = GPUTarget("cuda", arch, 32) if arch is not None else None
    options = {
        "num_warps": tile.num_warps,
        "num_stages": tile.num_stages,
        "ptx_version": ptx_version,
        "enable_fp_fusion": True,
    }
    try:
        compiled = triton.compile(source, target=target, options=options)
    except Exception as exc:  # Triton raises many types; report them as one
        where = f"sm_{arch}" if arch is not None else "the current GPU"
        raise PTXError(f"Triton cannot compile the kernel ({dtype}, {tile.name}) for {where}: {exc}") from exc
    meta = compiled.metadata
    scratch = sum(int(getattr(meta, key, 0) or 0) for key in ("global_scratch_size", "profile_scratch_size"))
    if scratch:
        raise PTXError(f"the kernel ({dtype}, {tile.name}) needs {scratch} bytes of Triton scratch memory")
    if meta.shared > MAX_SHARED_BYTES:
        raise PTXError(f"the kernel ({dtype}, {tile.name}) needs {meta.shared} bytes of shared memory")
    return CompiledPTX(
        name=meta.name,
        ptx=_drop_scratch_params(compiled.asm["ptx"], len(signature) - len(constexprs)),
        shared_bytes=int(meta.shared),
        num_warps=int(meta.num_warps),
        arch=int(meta.target.arch),
    )


def entry_params(ptx: str) -> list[str]:
    """The parameter declarations of the PTX's kernel entry, e.g. ``.param .u32 k_param_5``."""
    match = _ENTRY.search(ptx)
    if match is None:
        raise PTXError("no .entry in the PTX")
    return [p.strip() for p in match.group(2).split(",") if p.strip()]


def _drop_scratch_params(ptx: str, num_args: int) -> str:
    """Remove the pointer parameters Triton (>= 3.3) appends for its global and profile scratch
    buffers.

    TensorRT launches an AOT kernel with exactly its inputs, extra scalars and outputs; a PTX entry
    declaring two more parameters would have the driver read argument slots nobody filled. With
    zero scratch bytes the kernel never reads them; that is checked here before they go.
    """
    match = _ENTRY.search(ptx)
    if match is None:
        raise PTXError("no .entry in the PTX")
    name, params = match.group(1), entry_params(ptx)
    if len(params) == num_args:
        return ptx
    extra = params[num_args:]
    body = ptx[match.end() :]
    for index in range(num_args, len(params)):
        if re.search(rf"\[{name}_param_{index}\]", body):
            raise PTXError(f"the kernel reads Triton's scratch parameter {index}; it cannot be an AOT plugin")
    if not all(p.startswith(".param .u64") for p in extra):
        raise PTXError(f"unexpected trailing kernel parameters: {extra}")
    kept = ",\n\t".join(params[:num_args])
    return ptx[: match.start(2)] + "\n\t" + kept + "\n" + ptx[match.end(2) :]
