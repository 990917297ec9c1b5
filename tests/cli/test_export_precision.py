"""``--precision fp16`` through the commands: ``dyhead-export onnx`` writes and verifies the
mixed-precision graph; ``dyhead-export tensorrt --fp16`` on a float32 folder writes its float16
twin into --out before building (here the build then stops: no TensorRT on this machine)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from dyhead_serve import zoo
from dyhead_serve.cli.export import main as export_main
from dyhead_serve.export.tensorrt_build import graph_precision

DEFAULT_DIR = Path(zoo.__file__).parent / "zoo_files" / "default"


def test_onnx_precision_fp16_writes_and_verifies_a_float16_graph(tmp_path, capsys):
    out = tmp_path / "fp16"
    assert export_main(["onnx", "--model", "default", "--out", str(out), "--precision", "fp16"]) == 0
    printed = capsys.readouterr().out
    assert "verification (model.onnx, fp16, in ONNX Runtime vs PyTorch, one image)" in printed
    assert graph_precision(onnx.load(str(out / "model.onnx"), load_external_data=False)) == "fp16"
    assert json.loads((out / "model.json").read_text())["provenance"]["precision"] == "fp16"


def test_tensorrt_fp16_from_a_float32_folder_converts_it_first(tmp_path, capsys):
    try:
        import tensorrt  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed: this checks the step before the build, on a machine without it")
    out = tmp_path / "engine"
    code = export_main(["tensorrt", "--onnx", str(DEFAULT_DIR), "--out", str(out), "--fp16"])
    _, err = capsys.readouterr()
    assert code == 2 and "TensorRT" in err  # the build itself needs TensorRT
    assert "converting" in err and "float16" in err
    assert graph_precision(onnx.load(str(out / "model.onnx"), load_external_data=False)) == "fp16"
    assert graph_precision(onnx.load(str(DEFAULT_DIR / "model.onnx"), load_external_data=False)) == "fp32"
