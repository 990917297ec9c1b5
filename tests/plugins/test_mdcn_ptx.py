"""AOT compilation: the kernel compiles to PTX for every GPU generation TensorRT 10 serves, without
a GPU, with the argument list TensorRT's AOT plugins pass, an entry name per specialisation, and
ptxas (from nvcc) assembles it.

Each compilation runs in a child process: an LLVM abort (an unsupported target) kills that child
and fails the test instead of killing pytest. These tests import nothing but the plugin package
and pytest, so `.ci/triton_versions.sh` runs them (with ``--noconftest``) in small environments
holding other Triton versions.
"""

from __future__ import annotations

import glob
import inspect
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dyhead_serve.plugins.mdcn_kernel import DEFAULT_TILE, SCALAR_ARGS, TILES
from dyhead_serve.plugins.mdcn_ptx import (
    DTYPES,
    MAX_KERNEL_NAME,
    MAX_SHARED_BYTES,
    PTX_ISA,
    PTXError,
    compile_ptx,
    entry_params,
    kernel_name,
    ptx_isa,
)

# Ampere (A100, A10/RTX 30), Ada (L4, L40S), Hopper (H100/H200), Blackwell (B200, RTX 50 / RTX PRO).
REQUIRED_ARCHS = (80, 86, 89, 90, 100, 120)

_CHILD = """
import json, sys
from dyhead_serve.plugins.mdcn_kernel import TILES
from dyhead_serve.plugins.mdcn_ptx import compile_ptx

dtype, tile, arch, out = sys.argv[1], TILES[int(sys.argv[2])], int(sys.argv[3]), sys.argv[4]
compiled = compile_ptx(dtype, tile, arch=arch)
with open(out + ".ptx", "w") as f:
    f.write(compiled.ptx)
with open(out + ".json", "w") as f:
    json.dump({"name": compiled.name, "shared_bytes": compiled.shared_bytes, "arch": compiled.arch,
               "threads_per_block": compiled.threads_per_block, "ptx_version": compiled.ptx_version}, f)
"""


def _run_child(dtype: str, tile_index: int, arch: int, folder: Path) -> subprocess.CompletedProcess:
    """compile_ptx in a fresh interpreter with an empty Triton cache, writing into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(folder / "triton-cache")  # compile for real, not from a cache
    return subprocess.run(
        [sys.executable, "-c", _CHILD, dtype, str(tile_index), str(arch), str(folder / "kernel")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def _outcome(result: subprocess.CompletedProcess, folder: Path, what: str) -> tuple[dict, str]:
    """(metadata, PTX) of a child that succeeded; a failed or aborted child fails the test."""
    how = f"killed by signal {-result.returncode}" if result.returncode < 0 else f"status {result.returncode}"
    assert result.returncode == 0, f"compiling {what}: the child ended with {how}:\n{result.stderr[-4000:]}"
    return json.loads((folder / "kernel.json").read_text()), (folder / "kernel.ptx").read_text()


def _compile_in_child(dtype: str, tile_index: int, arch: int, folder: Path) -> tuple[dict, str]:
    return _outcome(_run_child(dtype, tile_index, arch, folder), folder, f"{dtype} for sm_{arch}")


DEFAULT_INDEX = TILES.index(DEFAULT_TILE)
JOBS = [("fp16", DEFAULT_INDEX, arch) for arch in REQUIRED_ARCHS] + [("fp32", 0, 80), ("bf16", 0, 80)]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int, int], tuple[Any, Path]]:
    """Every job of :data:`JOBS`, each compiled in its own child, as many at a time as there are
    cores; a test looks up its job with :func:`_outcome`, so each fails for its own child."""
    root = tmp_path_factory.mktemp("ptx")
    folders = {job: root / "-".join(map(str, job)) for job in JOBS}
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = pool.map(lambda job: _run_child(*job, folders[job]), JOBS)
        return {job: (result, folders[job]) for job, result in zip(JOBS, results, strict=True)}


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


def _check_entry(meta: dict, ptx: str, expected: str) -> None:
    """The PTX's one entry is the specialisation's name, short enough for TensorRT 10.9-10.13.3."""
    entries = re.findall(r"\.entry\s+(\w+)\s*\(", ptx)
    assert entries == [expected] == [meta["name"]]
    assert len(expected) <= MAX_KERNEL_NAME


def _check_arguments(ptx: str) -> None:
    """5 input pointers, the int32 scalars, 1 output pointer: nothing else (no scratch pointers)."""
    params = entry_params(ptx)
    kinds = ["u64" if ".u64" in p else "u32" if ".u32" in p else p for p in params]
    assert kinds == ["u64"] * 5 + ["u32"] * len(SCALAR_ARGS) + ["u64"]


@pytest.mark.parametrize("arch", REQUIRED_ARCHS)
def test_fp16_kernel_compiles_for_each_generation_at_its_isa(arch, compiled, tmp_path):
    meta, ptx = _outcome(*compiled["fp16", DEFAULT_INDEX, arch], f"fp16 for sm_{arch}")
    assert meta["arch"] == arch
    # Triton targets sm_90a, sm_100a, sm_120a (architecture-specific features) from Hopper on.
    assert re.search(rf"^\.target sm_{arch}{'a' if arch >= 90 else ''}$", ptx, re.MULTILINE)
    isa = PTX_ISA[arch]
    assert meta["ptx_version"] == isa
    assert f".version {isa // 10}.{isa % 10}\n" in ptx
    assert meta["shared_bytes"] <= MAX_SHARED_BYTES
    _check_entry(meta, ptx, kernel_name("fp16", DEFAULT_TILE, (3, 3), True))
    assert "_mdcn_forward" not in ptx  # the function's own name is gone everywhere
    _check_arguments(ptx)
    _assemble(ptx, tmp_path)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_fp32_and_bf16_kernels_assemble_for_sm80(dtype, compiled, tmp_path):
    meta, ptx = _outcome(*compiled[dtype, 0, 80], f"{dtype} for sm_80")
    _check_entry(meta, ptx, kernel_name(dtype, TILES[0], (3, 3), True))
    _check_arguments(ptx)
    _assemble(ptx, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tile_index", range(len(TILES)), ids=[t.name for t in TILES])
def test_every_tactic_fits_an_aot_launch(dtype, tile_index, tmp_path):
    """Every variant the plugin offers TensorRT (each dtype at each tile): it fits an AOT launch,
    assembles, and its PTX entry is its own short name."""
    meta, ptx = _compile_in_child(dtype, tile_index, 90, tmp_path / "child")
    assert meta["shared_bytes"] <= MAX_SHARED_BYTES
    assert meta["threads_per_block"] == TILES[tile_index].num_warps * 32
    _check_entry(meta, ptx, kernel_name(dtype, TILES[tile_index], (3, 3), True))
    _assemble(ptx, tmp_path)


def test_every_specialisation_has_its_own_short_entry_name():
    """At most 15 characters: TensorRT 10.9-10.13.3 keep only a name that fits in a std::string's
    own storage (pyPlugin.cpp getKernel returns a pointer into a destroyed string)."""
    specialisations = list(itertools.product(DTYPES, TILES, [(3, 3), (1, 1), (3, 1), (1, 3)], [True, False]))
    names = {kernel_name(*s) for s in specialisations}
    assert len(names) == len(specialisations)
    assert max(len(name) for name in names) <= MAX_KERNEL_NAME == 15
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) for name in names)  # a PTX identifier
    assert kernel_name("fp16", DEFAULT_TILE, (3, 3), True) == kernel_name("fp16", DEFAULT_TILE, (3, 3), True)


def test_an_architecture_without_a_known_isa_is_refused_before_llvm():
    with pytest.raises(PTXError, match="no PTX ISA version is known for sm_70"):
        ptx_isa(70)
    with pytest.raises(PTXError, match="sm_70"):
        compile_ptx("fp16", DEFAULT_TILE, arch=70)


def test_the_isa_is_the_lowest_each_target_accepts():
    # 7.8 floor (Triton's ::cta instructions); the ISA that introduced each sm_XXa target above it.
    assert {arch: ptx_isa(arch) for arch in REQUIRED_ARCHS} == {
        80: 78, 86: 78, 89: 78, 90: 80, 100: 86, 120: 87
    }  # fmt: skip


def test_the_architecture_must_be_named():
    # Without it Triton queries the driver (and builds its cuda_utils extension) inside
    # TensorRT's builder callback.
    assert inspect.signature(compile_ptx).parameters["arch"].default is inspect.Parameter.empty


def test_unknown_dtype_is_refused():
    with pytest.raises(PTXError, match="dtype"):
        compile_ptx("fp64", DEFAULT_TILE, arch=80)
