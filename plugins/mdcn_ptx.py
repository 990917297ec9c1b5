"""Ahead-of-time compilation of the kernel to PTX, as TensorRT's AOT plugin embeds it.

Triton compiles for a given :class:`GPUTarget` without a GPU, so this runs on any machine with
Triton >= 3.3.1 installed (3.3 is the first whose ``ASTSource`` takes ``constexprs``, 3.3.1 the
first that compiles ``tl.dot`` for sm_120). The result is checked
for what an AOT plugin cannot provide: Triton scratch memory (TensorRT passes no scratch buffer)
and more than 48 KiB of shared memory per block. Each specialisation gets an entry name of its
own (:func:`kernel_name`): one engine holds many plugin layers with different dtypes and tiles.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from .mdcn_kernel import POINTER_INPUTS, SCALAR_ARGS, TileConfig, compiled_kernel

__all__ = [
    "DTYPES",
    "MAX_KERNEL_NAME",
    "MAX_SHARED_BYTES",
    "PTX_ISA",
    "CompiledPTX",
    "PTXError",
    "compile_ptx",
    "current_arch",
    "entry_params",
    "kernel_description",
    "kernel_name",
    "kernel_signature",
    "ptx_isa",
]

DTYPES = ("fp32", "fp16", "bf16")  # Triton's names
MAX_SHARED_BYTES = 48 * 1024
# The longest kernel name TensorRT 10.9-10.13.3 keep intact (libstdc++ small-string capacity).
MAX_KERNEL_NAME = 15
# PTX ISA version (80: 8.0) per compute capability: the lowest that Triton's target for it accepts,
# so that the oldest drivers able to run the GPU still JIT-compile the embedded PTX. From sm_90 on
# Triton targets the architecture-specific ``sm_XXa``, which LLVM and ptxas refuse below the ISA
# that introduced it (8.0 for sm_90a, 8.6 for sm_100a, 8.7 for sm_120a, 8.8 for sm_103a/sm_121a,
# 9.0 for sm_110a); asking less aborts the whole process inside LLVM. Never below 7.8 (CUDA 11.8,
# the oldest CUDA any TensorRT 10 supports): newer Triton (3.8) emits ``::cta``-scoped
# instructions that need it even on sm_75..sm_89. An architecture missing here is refused before
# LLVM runs.
PTX_ISA = {
    75: 78, 80: 78, 86: 78, 87: 78, 89: 78,
    90: 80, 100: 86, 103: 88, 110: 90, 120: 87, 121: 88,
}  # fmt: skip
_ENTRY = re.compile(r"\.entry\s+(\w+)\s*\((.*?)\)", re.DOTALL)


class PTXError(RuntimeError):
    """The kernel cannot be compiled into a form an AOT plugin can launch."""


@dataclass(frozen=True)
class CompiledPTX:
    """A compiled kernel: what TensorRT's ``aot_impl`` returns, plus its launch needs."""

    name: str  # the PTX entry, :func:`kernel_name`
    ptx: str
    shared_bytes: int
    num_warps: int
    arch: int
    ptx_version: int  # 80: ISA 8.0

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


def ptx_isa(arch: int) -> int:
    """The PTX ISA version (int, 80: 8.0) the kernel is compiled with for compute capability
    ``arch`` (80, 86, 89, 90, 100, 120, ...); see :data:`PTX_ISA`."""
    if arch not in PTX_ISA:
        known = ", ".join(f"sm_{a}" for a in sorted(PTX_ISA))
        raise PTXError(
            f"no PTX ISA version is known for sm_{arch}: the plugin's kernel compiles for {known} "
            "(add the ISA that introduced the architecture to PTX_ISA in plugins/mdcn_ptx.py)"
        )
    return PTX_ISA[arch]


def kernel_name(dtype: str, tile: TileConfig, kernel_size: tuple[int, int], has_bias: bool) -> str:
    """The PTX entry name of one specialisation: ``mdcn_`` and 10 hex digits of a hash of it, at
    most :data:`MAX_KERNEL_NAME` characters (e.g. ``mdcn_3f9c0a1b2d``).

    Every specialisation that can meet another in one engine (dtype, tile, kernel size, bias) has
    its own name, so no two plugin layers declare different kernels under one symbol. The name is
    short because TensorRT 10.9 to 10.13.3 hand the AOT kernel name to the builder as a pointer
    into a destroyed ``std::string`` (``python/src/infer/pyPlugin.cpp``, ``getKernel``; fixed in
    10.14): a name of at most 15 characters lives inside the string object (small-string storage)
    and survives, a longer one is freed heap memory. :func:`kernel_description` is the readable
    form, written into the PTX as a comment.
    """
    digest = hashlib.sha256(kernel_description(dtype, tile, kernel_size, has_bias).encode()).hexdigest()
    return f"mdcn_{digest[:10]}"


def kernel_description(dtype: str, tile: TileConfig, kernel_size: tuple[int, int], has_bias: bool) -> str:
    """A readable name of one specialisation, e.g. ``fp16 m128n64k32w4s1 k3x3 bias``."""
    kh, kw = kernel_size
    return f"{dtype} {tile.name} k{kh}x{kw} {'bias' if has_bias else 'nobias'}"


def current_arch() -> int:
    """The compute capability of the current CUDA device as an int (9.0 -> 90).

    Read through torch's CUDA runtime, so compiling for it needs neither Triton's driver query
    nor its ``cuda_utils`` extension (which Triton would build inside TensorRT's builder).
    """
    import torch

    if not torch.cuda.is_available():
        raise PTXError("no CUDA device is visible: name the compute capability to compile for (arch=...)")
    major, minor = torch.cuda.get_device_capability(torch.cuda.current_device())
    return 10 * major + minor


def compile_ptx(
    dtype: str,
    tile: TileConfig,
    *,
    arch: int,
    kernel_size: tuple[int, int] = (3, 3),
    has_bias: bool = True,
) -> CompiledPTX:
    """Compile the kernel to PTX for one GPU architecture.

    Args:
        dtype: ``fp32``, ``fp16`` or ``bf16`` (bf16 needs sm_80 or newer).
        tile: the GEMM tiling.
        arch: compute capability as an int (80, 86, 89, 90, 100, 120, ...; a key of
            :data:`PTX_ISA`). Required: without it Triton would query the driver.
        kernel_size: (kh, kw).
        has_bias: whether the bias pointer is read.

    Returns:
        The PTX, with the entry renamed to :func:`kernel_name` and Triton's scratch parameters
        removed, at ISA :func:`ptx_isa` ``(arch)``.
    """
    import triton  # type: ignore[import-not-found,unused-ignore]
    from triton.backends.compiler import GPUTarget  # type: ignore[import-not-found,unused-ignore]

    if dtype not in DTYPES:
        raise PTXError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    ptx_version = ptx_isa(arch)  # before LLVM: an unsupported target must not abort the process
    precision = "ieee" if dtype == "fp32" else "tf32"
    signature, constexprs = kernel_signature(dtype, tile, kernel_size, has_bias, precision)
    source = triton.compiler.ASTSource(fn=compiled_kernel(), signature=signature, constexprs=constexprs)
    options = {
        "num_warps": tile.num_warps,
        "num_stages": tile.num_stages,
        "ptx_version": ptx_version,
        "enable_fp_fusion": True,
    }
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    except Exception as exc:  # Triton raises many types; report them as one
        what = f"({dtype}, {tile.name}) for sm_{arch}"
        raise PTXError(f"Triton cannot compile the kernel {what}: {exc}") from exc
    meta = compiled.metadata
    scratch = sum(int(getattr(meta, key, 0) or 0) for key in ("global_scratch_size", "profile_scratch_size"))
    if scratch:
        raise PTXError(f"the kernel ({dtype}, {tile.name}) needs {scratch} bytes of Triton scratch memory")
    if meta.shared > MAX_SHARED_BYTES:
        raise PTXError(f"the kernel ({dtype}, {tile.name}) needs {meta.shared} bytes of shared memory")
    name = kernel_name(dtype, tile, kernel_size, has_bias)
    ptx = _drop_scratch_params(compiled.asm["ptx"], len(signature) - len(constexprs))
    ptx = _rename_entry(ptx, str(meta.name), name)
    readable = kernel_description(dtype, tile, kernel_size, has_bias)
    described = f"// {name}: dyhead modulated deformable conv, {readable}\n"
    return CompiledPTX(
        name=name,
        ptx=described + ptx,
        shared_bytes=int(meta.shared),
        num_warps=int(meta.num_warps),
        arch=int(meta.target.arch),
        ptx_version=ptx_version,
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


def _rename_entry(ptx: str, old: str, new: str) -> str:
    """Rename the kernel entry ``old`` (and its ``old_param_N`` parameters) to ``new``."""
    renamed = re.sub(rf"(?<![\w$]){re.escape(old)}(?=_param_\d|[^\w$]|$)", new, ptx)
    entry = _ENTRY.search(renamed)
    if entry is None or entry.group(1) != new or re.search(rf"(?<![\w$]){re.escape(old)}\b", renamed):
        raise PTXError(f"the PTX entry {old!r} could not be renamed to {new!r}")
    return renamed
