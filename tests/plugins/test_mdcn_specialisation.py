"""The kernel PyTorch (and the JIT plugin) launch is compiled like the AOT PTX TensorRT embeds: no
argument specialised. Triton's JIT would otherwise make every int32 scalar equal to 1 a constant
and assume 16-divisible scalars and 16-byte aligned pointers, so the GPU numerics and memcheck
tests would check other machine code than an engine runs.

Checked on the CPU through Triton's own launch binder (what a CUDA launch computes before it
compiles), for a GPU target named explicitly.
"""

from __future__ import annotations

import pytest
import torch

from dyhead_serve.plugins.mdcn_kernel import POINTER_ARGS, SCALAR_ARGS, TILES, compiled_kernel
from dyhead_serve.plugins.mdcn_ptx import kernel_signature

CONSTEXPRS = dict(KH=3, KW=3, HAS_BIAS=True, DOT_PRECISION="ieee", BLOCK_M=64, BLOCK_N=64, BLOCK_K=32)


def test_no_scalar_nor_pointer_is_specialised():
    params = {p.name: p for p in compiled_kernel().params}
    assert [n for n, p in params.items() if not p.is_constexpr] == [
        *POINTER_ARGS[:-1],
        *SCALAR_ARGS,
        "output_ptr",
    ]
    assert all(params[name].do_not_specialize for name in SCALAR_ARGS)
    assert all(params[name].do_not_specialize_on_alignment for name in POINTER_ARGS)


def test_a_launch_compiles_the_aot_signature_without_attributes():
    """Scalars of 1 and multiples of 16, aligned pointers: the launch's signature is the AOT one
    (:func:`kernel_signature`) and carries no specialisation attribute, as the AOT source has none."""
    jit = pytest.importorskip("triton.runtime.jit")
    if not hasattr(jit, "create_function_from_signature"):
        pytest.skip("this Triton has no create_function_from_signature (Triton >= 3.2 binds launches so)")
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend

    kernel = compiled_kernel()
    backend = make_backend(GPUTarget("cuda", 90, 32))
    binder = jit.create_function_from_signature(kernel.signature, kernel.params, backend)
    x = torch.zeros(1024)
    scalars = [1, 16, 32, 32, 16, 32, 32, 18 * 1024, 9 * 1024, 1, 1, 1, 1, 1, 1, 1, 1]
    bound, specialization, options = binder(*[x] * 5, *scalars, x, **CONSTEXPRS)
    _, signature, constexprs, attrs = kernel._pack_args(backend, {}, bound, specialization, options)
    aot_signature, aot_constexprs = kernel_signature("fp32", TILES[0], (3, 3), True, "ieee")
    assert signature == aot_signature
    assert {path: found for path, found in attrs.items() if found} == {}  # no attribute on any argument
    assert {kernel.arg_names[path[0]]: value for path, value in constexprs.items()} == aot_constexprs
