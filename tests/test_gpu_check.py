"""benchmarks/gpu_check.sh: its report (the format docs/gpu-check.md describes) from pytest's JUnit XML,
the time budget, and a whole run on a machine without a GPU, where every GPU step says it skipped
and why."""

from __future__ import annotations

import os
import subprocess
import sys
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
    assert "| kernel numerics (every tile and dtype) | passed | 41 | 49 passed |" in lines
    assert "| whole model: ATSS R-50 800x1333 | not run | 0 | the time budget was spent |" in lines
    assert "## kernel numerics (every tile and dtype)" in lines and "`python -m pytest x`" in lines


def test_steps_past_the_budget_are_reported_not_run(gpu_check, tmp_path):
    steps, info = gpu_check.run_checks(tmp_path, budget_s=0)
    assert steps[0].name == "environment" and steps[0].result == "passed"
    assert [s.result for s in steps[1:]] == ["not run"] * 5
    assert {s.note for s in steps[1:]} == {"the time budget was spent"}
    assert "torch" in info


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
    for step in ("compute-sanitizer memcheck (small case)", "benchmarks/dcn_gpu.py: deformable convs",
                 "whole model: ATSS R-50 800x1333"):  # fmt: skip
        assert f"| {step} | skipped | 0 | no CUDA GPU visible |" in text
    assert "| kernel numerics (every tile and dtype) | skipped |" in text
    assert "| gpu and tensorrt tests | skipped |" in text and "needs TensorRT" in text
