"""`dyhead-export tensorrt`: what can be checked without TensorRT (argument handling, profiles, the
graph the parser gets, the errors), and the full build where TensorRT and a GPU exist."""

from __future__ import annotations

import argparse

import onnx
import pytest
import torch

from dyhead_serve.export.cli import main as export_main
from dyhead_serve.export.tensorrt_build import (
    PROFILES,
    EngineBuildError,
    ShapeProfile,
    graph_dcn_flavour,
    parse_shape,
    set_plugin_impl,
)
from dyhead_serve.export.tensorrt_cli import profile_from_args
from dyhead_serve.model_args import override_flags
from dyhead_serve.ops import ModulatedDeformConv2d
from dyhead_serve.ops.onnx_symbolic import deform_conv_onnx_symbolic
from dyhead_serve.pipeline.preprocess import InputSpec
from dyhead_serve.runtime.artifact import ModelArtifact
from tests.conftest import TINY_OVERRIDES
from tests.hardware import HAS_TENSORRT, needs_tensorrt


class _OneDeformConv(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = ModulatedDeformConv2d(16, 8, kernel_size=3, padding=1)

    def forward(self, images, offset, mask):
        return self.conv(images, offset, mask)


def _model_dir(tmp_path, flavour: str):
    """A folder shaped like `dyhead-export onnx` output, holding a one-node graph."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    args = (torch.randn(1, 16, 8, 8), torch.randn(1, 18, 8, 8), torch.rand(1, 9, 8, 8))
    with deform_conv_onnx_symbolic(flavour, 19), torch.no_grad():
        torch.onnx.export(
            _OneDeformConv().eval(), args, str(tmp_path / "model.onnx"), dynamo=False, opset_version=19
        )
    spec = InputSpec("BGR", (103.53, 116.28, 123.675), (1.0, 1.0, 1.0), 800, 1333, 128)
    ModelArtifact("one", spec, ["a"], {"type": "dense", "spec": {}}).save(tmp_path / "model.json")
    return tmp_path


def test_parse_shape_and_profiles():
    assert parse_shape("2x3x896x1408") == (2, 3, 896, 1408)
    with pytest.raises(ValueError, match="NxCxHxW"):
        parse_shape("896x1408")
    for profile in PROFILES.values():
        profile.check(128)
    args = argparse.Namespace(profile="coco", min_shape=None, opt_shape=None, max_shape=(2, 3, 1408, 1408))
    assert profile_from_args(args) == ShapeProfile((1, 3, 128, 128), (1, 3, 896, 1408), (2, 3, 1408, 1408))


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        (ShapeProfile((1, 3, 128, 128), (1, 3, 800, 1333), (1, 3, 1408, 1408)), "multiples of 128"),
        (ShapeProfile((1, 3, 256, 256), (1, 3, 128, 128), (1, 3, 1408, 1408)), "min <= opt <= max"),
        (ShapeProfile((1, 1, 128, 128), (1, 1, 128, 128), (1, 1, 128, 128)), "Nx3xHxW"),
    ],
)
def test_profile_checks(profile, message):
    with pytest.raises(EngineBuildError, match=message):
        profile.check(128)


def test_flavour_detection_and_the_aot_attribute(tmp_path):
    plugin = onnx.load(str(_model_dir(tmp_path / "p", "plugin") / "model.onnx"))
    assert graph_dcn_flavour(plugin) == "plugin"
    assert set_plugin_impl(plugin, "aot") == 1
    (node,) = [n for n in plugin.graph.node if n.op_type == "ModulatedDeformConv2d"]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}["aot"] == 1
    set_plugin_impl(plugin, "jit")  # replaces, never duplicates
    assert [onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "aot"] == [0]
    builtin = onnx.load(str(_model_dir(tmp_path / "b", "onnx") / "model.onnx"))
    assert graph_dcn_flavour(builtin) == "onnx"


def test_dcn_choice_must_match_the_graph(tmp_path, capsys):
    model_dir = _model_dir(tmp_path, "onnx")
    code = export_main(
        ["tensorrt", "--onnx", str(model_dir), "--out", str(tmp_path / "e"), "--dcn", "plugin"]
    )
    assert code == 2
    assert "DeformConv nodes but --dcn plugin" in capsys.readouterr().err


def test_bad_shape_is_a_usage_error(tmp_path, capsys):
    model_dir = _model_dir(tmp_path, "onnx")
    code = export_main(
        ["tensorrt", "--onnx", str(model_dir), "--out", str(tmp_path), "--max-shape", "1x3x1000x1000"]
    )
    assert code == 2
    assert "multiples of 128" in capsys.readouterr().err


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_without_tensorrt_the_build_says_so(tmp_path, capsys):
    model_dir = _model_dir(tmp_path, "plugin")
    assert export_main(["tensorrt", "--onnx", str(model_dir), "--out", str(model_dir)]) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err
    assert not (model_dir / "model.plan").exists()


@pytest.mark.tensorrt
@needs_tensorrt
@pytest.mark.parametrize("dcn", ["plugin", "builtin"])
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_build_verify_and_serve_the_tiny_model(tiny_weights, tmp_path, capsys, dcn, fp16):
    from dyhead_serve.runtime.loader import load_backend

    overrides = override_flags(TINY_OVERRIDES)
    argv = ["tensorrt", "--config", "dyhead_r50_atss_fpn_1x", "--weights", str(tiny_weights),
            "--out", str(tmp_path), "--profile", "small", "--dcn", dcn, *overrides,
            *(["--fp16"] if fp16 else [])]  # fmt: skip
    code = export_main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "lost" in out and "gained" in out
    meta = ModelArtifact.load(tmp_path / "model.json").provenance["tensorrt_engine"]
    assert meta["precision"] == ("fp16" if fp16 else "fp32") and meta["compute_capability"]
    backend = load_backend(tmp_path, backend="tensorrt")
    for shape in [(1, 3, 128, 128), (2, 3, 256, 384), (1, 3, 640, 640)]:
        outputs = backend.infer(torch.randn(*shape), torch.tensor([list(shape[2:])] * shape[0]))
        assert set(outputs) == {"logits", "deltas", "centerness"}
    # Batch 5 is above the "small" profile's maximum of 2: it runs as 2 + 2 + 1.
    images, sizes = torch.randn(5, 3, 256, 256), torch.tensor([[256, 256]] * 5)
    chunked = backend.infer(images, sizes)
    one_by_one = [backend.infer(images[i : i + 1], sizes[i : i + 1]) for i in range(5)]
    for name, value in chunked.items():
        assert value.shape[0] == 5
        torch.testing.assert_close(value, torch.cat([o[name] for o in one_by_one]), rtol=1e-2, atol=1e-2)
    assert (tmp_path / "timing.cache").stat().st_size > 0
