"""AOT compilation: the kernel compiles to PTX for sm_80, sm_86, sm_89 and sm_90 without a GPU,
with the argument list TensorRT's AOT plugins pass, and ptxas (from nvcc) assembles it."""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dyhead_serve.plugins.mdcn_kernel import DEFAULT_TILE, SCALAR_ARGS, TILES
from dyhead_serve.plugins.mdcn_ptx import MAX_SHARED_BYTES, PTXError, compile_ptx, entry_params


def _ptxas() -> str | None:
    found = shutil.which("ptxas")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/local/cuda*/bin/ptxas"))
    return candidates[-1] if candidates else None


def _assemble(ptx: str, tmp_path: Path) -> None:
    ptxas = _ptxas()
    if ptxas is None:
        pytest.skip("ptxas (from the CUDA toolkit's nvcc) is not installed")
    target = re.search(r"^\.target\s+(\w+)", ptx, re.MULTILINE)
    assert target is not None
    source = tmp_path / "mdcn.ptx"
    source.write_text(ptx)
    result = subprocess.run(
        [ptxas, f"-arch={target.group(1)}", str(source), "-o", str(tmp_path / "mdcn.cubin")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def _check_arguments(ptx: str) -> None:
    """5 input pointers, the int32 scalars, 1 output pointer: nothing else (no scratch pointers)."""
    params = entry_params(ptx)
    kinds = ["u64" if ".u64" in p else "u32" if ".u32" in p else p for p in params]
    assert kinds == ["u64"] * 5 + ["u32"] * len(SCALAR_ARGS) + ["u64"]


@pytest.mark.parametrize("arch", [80, 86, 89, 90])
def test_fp16_kernel_compiles_and_assembles(arch, tmp_path):
    compiled = compile_ptx("fp16", DEFAULT_TILE, arch=arch)
    assert compiled.arch == arch
    assert f".target sm_{arch}" in compiled.ptx
    assert ".version 8.0" in compiled.ptx
    assert compiled.shared_bytes <= MAX_SHARED_BYTES
    _check_arguments(compiled.ptx)
    _assemble(compiled.ptx, tmp_path)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_fp32_and_bf16_kernels_assemble_for_sm80(dtype, tmp_path):
    compiled = compile_ptx(dtype, DEFAULT_TILE, arch=80)
    _check_arguments(compiled.ptx)
    _assemble(compiled.ptx, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("tile", TILES, ids=[t.name for t in TILES])
def test_every_tactic_fits_an_aot_launch(dtype, tile, tmp_path):
    compiled = compile_ptx(dtype, tile, arch=90)
    assert compiled.shared_bytes <= MAX_SHARED_BYTES
    assert compiled.threads_per_block == tile.num_warps * 32
    _assemble(compiled.ptx, tmp_path)


def test_unknown_dtype_is_refused():
    with pytest.raises(PTXError, match="dtype"):
        compile_ptx("fp64", DEFAULT_TILE, arch=80)
