"""benchmarks/gpu_check.sh: its report (the format docs/gpu-check.md describes) from pytest's JUnit XML,
the time budget, and a whole run on a machine without a GPU, where every GPU step says it skipped
and why."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import load_benchmark
from tests.hardware import HAS_CUDA

REPO = Path(__file__).resolve().parents[1]

NUMERICS = "test_every_tile_and_dtype_matches_torchvision"
PROPS = (
    '<properties><property name="relative_error" value="{}" />'
    '<property name="tolerance" value="{}" /></properties>'
)
JUNIT = f"""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
  <testcase name="{NUMERICS}[fp16-m64n64k32w4s1-odd]">{PROPS.format("0.000412", "0.002")}</testcase>
  <testcase name="{NUMERICS}[bf16-m128n128k32w8s1-large]">{PROPS.format("0.031", "0.02")}
    <failure message="assert 0.031 &lt; 0.02" /></testcase>
  <testcase name="test_autocast"><skipped message="needs a CUDA GPU (and Triton)" /></testcase>
</testsuite></testsuites>
"""


@pytest.fixture(scope="module")
def gpu_check():
    return load_benchmark("gpu_check")


def test_numerics_rows_and_counts_come_from_the_junit_xml(gpu_check, tmp_path):
    junit = tmp_path / "numerics.xml"
    junit.write_text(JUNIT)
    assert gpu_check._junit_counts(junit) == {"passed": 1, "failed": 1, "skipped": 1}
    assert gpu_check._skip_reasons(junit) == ["needs a CUDA GPU (and Triton)"]
    assert gpu_check._numerics_table(junit)[1:] == [
        "| dtype | tile | case | relative error | tolerance | result |",
        "|---|---|---|---|---|---|",
        "| fp16 | m64n64k32w4s1 | odd | 0.000412 | 0.002 | ok |",
        "| bf16 | m128n128k32w8s1 | large | 0.031 | 0.02 | FAIL |",
    ]


def test_the_report_names_the_machine_and_tabulates_every_step(gpu_check):
    table = ["", "| dtype | tile | case | relative error | tolerance | result |"]
    steps = [
        gpu_check.Step("environment", "passed", 3.2, "NVIDIA H200"),
        gpu_check.Step(
            "kernel numerics (every tile and dtype)",
            "passed",
            41,
            "49 passed",
            "python -m pytest x",
            "49 passed",
            table,
        ),
        gpu_check.Step("whole model: ATSS R-50 800x1333", "not run", note="the time budget was spent"),
    ]
    info = {
        "gpu": "NVIDIA H200", "capability": "sm_90", "memory_gib": 139.8, "gpus": 1, "commit": "abc1234",
        "python": "3.12.3", "torch": "2.9.1+cu128", "cuda": "12.8", "triton": "3.5.1", "tensorrt": "10.11",
    }  # fmt: skip
    report = gpu_check.render(steps, info, 312.4, 480)
    lines = report.splitlines()
    assert lines[0] == "# GPU check: NVIDIA H200"
    assert "- GPU: NVIDIA H200 (sm_90, 139.8 GiB, 1 visible)" in lines
    assert "- Python 3.12.3, torch 2.9.1+cu128 (CUDA 12.8), Triton 3.5.1, TensorRT 10.11" in lines
    assert "- total: 312 s of a 480 s budget" in lines
    assert (
        "- Triton's JIT launcher: C compiler none found (set CC, or install gcc); Python headers missing "
        "in ? (install python3-dev)" in lines
    )
    assert "| kernel numerics (every tile and dtype) | passed | 41 | 49 passed |" in lines
    assert "| whole model: ATSS R-50 800x1333 | not run | 0 | the time budget was spent |" in lines
    assert "## kernel numerics (every tile and dtype)" in lines and "`python -m pytest x`" in lines


def test_steps_past_the_budget_are_reported_not_run(gpu_check, tmp_path):
    steps, info = gpu_check.run_checks(tmp_path, budget_s=0)
    assert steps[0].name == "environment" and steps[0].result == "passed"
    assert [s.result for s in steps[1:]] == ["not run"] * len(gpu_check.plan())
    assert {s.note for s in steps[1:]} == {"the time budget was spent"}
    assert "torch" in info
    assert "c_compiler" in info and "python_include" in info  # what Triton's JIT launcher needs


@pytest.mark.parametrize("slow", [False, True])
def test_the_caps_add_up_to_at_most_the_budget(gpu_check, slow):
    caps = gpu_check.ENVIRONMENT_CAP_S + sum(cap for _, cap in gpu_check.plan(slow))
    assert caps <= (gpu_check.SLOW_BUDGET_S if slow else gpu_check.BUDGET_S)


def test_a_step_past_its_cap_is_killed_with_its_children(gpu_check):
    """The step runs in its own process group: at the cap its background children go too."""
    status, output, seconds = gpu_check._run(["bash", "-c", "sleep 120 & echo $!; wait"], timeout=1)
    assert status is None and seconds < 1 + gpu_check.KILL_GRACE_S + 5
    child = int(output.split()[0])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_the_engine_step_builds_one_fp16_engine_from_the_float16_onnx_and_evaluates_both(gpu_check, tmp_path):
    fp32 = [command for _, command in gpu_check.engine_commands(tmp_path, "fp32")]
    fp16 = dict(gpu_check.engine_commands(tmp_path, "fp16"))
    assert fp16["export"][1:] == ["onnx", "--model", "default", "--out", str(tmp_path / "default-fp16"),
                                  "--dcn", "plugin", "--precision", "fp16"]  # fmt: skip
    assert "--fp16" in fp16["build"] and "--plugin-impl" in fp16["build"] and "aot" in fp16["build"]
    assert not any("--fp16" in command or "fp16" in " ".join(command) for command in fp32)
    assert fp16["eval"][1:6] == ["eval", "--model", str(tmp_path / "default-fp16"), "--backend", "tensorrt"]
    rows = [
        {"precision": "fp32", "ap": 41.234, "ap50": 60.51, "p50_ms": 12.34, "p90_ms": 13.0, "build_s": 95.2},
        {"precision": "fp16", "ap50": 60.1},
    ]
    assert gpu_check._engines_table(rows)[1:] == [
        "| engine | AP | AP50 | p50 ms | p90 ms | build s |",
        "|---|---|---|---|---|---|",
        "| fp32 | 41.23 | 60.51 | 12.3 | 13.0 | 95 |",
        "| fp16 | - | 60.10 | - | - | - |",
    ]


@pytest.mark.slow
@pytest.mark.skipif(HAS_CUDA, reason="on a GPU host, run benchmarks/gpu_check.sh itself")
def test_a_whole_run_without_a_gpu_says_what_it_skipped(tmp_path):
    report = tmp_path / "report.md"
    command = ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--out", str(report)]
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    text = report.read_text()
    assert text.startswith("# GPU check: no CUDA GPU\n")
    skipped = (
        "compute-sanitizer memcheck (small case)",
        "benchmarks/dcn_gpu.py: deformable convs",
        "whole model: ATSS R-50 800x1333",
        "default model: fp32 and fp16 engines (AP, latency)",
    )
    for step in skipped:
        assert f"| {step} | skipped | 0 | no CUDA GPU visible |" in text
    assert "| kernel numerics (every tile and dtype) | skipped |" in text
    assert "| gpu and tensorrt tests | skipped |" in text and "needs TensorRT" in text
    assert "- Triton's JIT launcher: C compiler " in text
