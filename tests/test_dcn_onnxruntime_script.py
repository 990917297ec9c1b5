"""benchmarks/dcn_onnxruntime.py on a tiny layer: its three graphs run in ONNX Runtime and the two
deformable-conv formulations agree with torchvision. Nothing here asserts a time."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import load_benchmark

pytest.importorskip("onnxruntime")


def test_both_formulations_match_torchvision_on_a_tiny_layer(monkeypatch, capsys):
    script = load_benchmark("dcn_onnxruntime")
    argv = ["dcn_onnxruntime.py", "--channels", "4", "--size", "6x8", "--iters", "1", "--offset-std", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    script.main()
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[3:]}
    assert set(rows) == {"DeformConv", "GEMM", "GridSample+MatMul"}
    assert float(rows["DeformConv"][-1]) < 1e-5
    assert float(rows["GridSample+MatMul"][-1]) < 1e-4
