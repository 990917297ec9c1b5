"""`dyhead-export tensorrt`: what can be checked without TensorRT (argument handling, profiles, the
graph the parser gets, the errors), and the full build where TensorRT and a GPU exist."""

from __future__ import annotations

import argparse

import onnx
import pytest
import torch

from dyhead_serve import zoo
from dyhead_serve.cli.export import main as export_main
from dyhead_serve.cli.export_tensorrt import profile_from_args
from dyhead_serve.config import load_config
from dyhead_serve.export.onnx_export import input_dims
from dyhead_serve.export.tensorrt_build import (
    PROFILES,
    EngineBuildError,
    ShapeProfile,
    _load_timing_cache,
    _parse,
    check_graph_precision,
    configure_precision,
    fit_profile,
    graph_dcn_flavour,
    graph_input_dims,
    graph_precision,
    network_flags,
    parse_shape,
    plugin_impl_for,
    set_plugin_impl,
    timing_cache_name,
)
from dyhead_serve.modeling.build import build_model
from dyhead_serve.ops import ModulatedDeformConv2d
from dyhead_serve.ops.onnx_symbolic import deform_conv_onnx_symbolic
from dyhead_serve.pipeline.preprocess import InputSpec
from dyhead_serve.runtime.artifact import ModelArtifact
from dyhead_serve.runtime.export_command import override_flags
from tests.conftest import TINY_OVERRIDES, one_class_dense_decoder
from tests.hardware import HAS_TENSORRT, needs_tensorrt
from tests.tensorrt_calls import TensorRTCalls, TensorRTFlags


class _OneDeformConv(torch.nn.Module):
    """images [N, 3, H, W] -> offsets and masks from a 3x3 conv -> one deformable conv."""

    def __init__(self) -> None:
        super().__init__()
        self.offset_mask = torch.nn.Conv2d(3, 27, kernel_size=3, padding=1)
        self.conv = ModulatedDeformConv2d(3, 8, kernel_size=3, padding=1)

    def forward(self, images):
        offset_mask = self.offset_mask(images)
        return self.conv(images, offset_mask[:, :18], offset_mask[:, 18:].sigmoid())


def _model_dir(tmp_path, flavour: str, batch: int | None = None):
    """A folder shaped like `dyhead-export onnx` output: an ``images`` input of dynamic height and
    width, and a dynamic batch unless ``batch`` fixes it."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    axes = {"images": {**({} if batch else {0: "batch"}), 2: "height", 3: "width"}}
    with deform_conv_onnx_symbolic(flavour, 19), torch.no_grad():
        torch.onnx.export(
            _OneDeformConv().eval(), (torch.randn(batch or 1, 3, 16, 16),), str(tmp_path / "model.onnx"),
            dynamo=False, opset_version=19, input_names=["images"], dynamic_axes=axes,
        )  # fmt: skip
    spec = InputSpec("BGR", (103.53, 116.28, 123.675), (1.0, 1.0, 1.0), 800, 1333, 128)
    ModelArtifact("one", spec, ["a"], one_class_dense_decoder()).save(tmp_path / "model.json")
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


@pytest.mark.parametrize("extra", [["--weights", "w.pth"], ["--set", "MODEL.ATSS.NUM_CLASSES", "3"]])
def test_an_exported_network_takes_no_weights_nor_overrides(tmp_path, capsys, extra):
    model_dir = _model_dir(tmp_path, "onnx")
    code = export_main(["tensorrt", "--onnx", str(model_dir), "--out", str(tmp_path / "e"), *extra])
    assert code == 2
    assert "--weights and config overrides no longer apply" in capsys.readouterr().err


def test_bad_shape_is_a_usage_error(tmp_path, capsys):
    model_dir = _model_dir(tmp_path, "onnx")
    code = export_main(
        ["tensorrt", "--onnx", str(model_dir), "--out", str(tmp_path), "--max-shape", "1x3x1000x1000"]
    )
    assert code == 2
    assert "multiples of 128" in capsys.readouterr().err


def test_the_profile_takes_the_axes_the_graph_fixes():
    asked = PROFILES["coco-batch8"]
    assert fit_profile(asked, ["batch", 3, "height", "width"]) == (asked, [])
    fitted, notes = fit_profile(asked, [1, 3, "height", "width"])
    assert fitted == ShapeProfile((1, 3, 128, 128), (1, 3, 896, 1408), (1, 3, 1408, 1408))
    assert notes == [
        "model.onnx fixes the batch at 1: the engine's profile takes batch 1 (the profile asked 1..8); "
        "a larger batch runs in chunks of it"
    ]
    fitted, notes = fit_profile(asked, [4, 3, 896, "width"])
    assert (fitted.min, fitted.max) == ((4, 3, 896, 128), (4, 3, 896, 1408))
    assert [n.split(":")[0] for n in notes] == [
        "model.onnx fixes the batch at 4",
        "model.onnx fixes the height at 896",
    ]
    with pytest.raises(EngineBuildError, match=r"not \[N, 3, H, W\]"):
        fit_profile(asked, ["batch", 1, "height", "width"])


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_the_engine_profile_of_every_zoo_model_matches_its_graph(name):
    """The dims the ONNX export writes for each zoo model, and the profile an engine of it gets
    from the batch-8 preset the Docker image asks for: Faster R-CNN's graph has a batch of 1."""
    entry = zoo.get_model(name)
    model = build_model(load_config(entry.config_path, overrides=["MODEL.DEVICE", "cpu"]))
    dims = input_dims(model, batch=None)
    fitted, notes = fit_profile(PROFILES["coco-batch8"], dims["images"])
    if name == "dyhead_r50_rcnn_fpn_1x":
        assert dims == {"images": [1, 3, "height", "width"], "image_sizes": [1, 2]}
        assert [s[0] for s in (fitted.min, fitted.opt, fitted.max)] == [1, 1, 1] and len(notes) == 1
    else:
        assert dims["images"] == ["batch", 3, "height", "width"]
        assert (fitted, notes) == (PROFILES["coco-batch8"], [])


def test_the_build_fits_the_profile_to_a_fixed_batch_graph_and_says_so(tmp_path, capsys):
    """Read from the real graph, before TensorRT is needed (so it runs here up to that point)."""
    model_dir = _model_dir(tmp_path, "onnx", batch=1)
    assert graph_input_dims(onnx.load(str(model_dir / "model.onnx"))) == [1, 3, "height", "width"]
    code = export_main(
        ["tensorrt", "--onnx", str(model_dir), "--out", str(tmp_path / "e"), "--profile", "coco-batch8"]
    )
    err = capsys.readouterr().err
    assert "[tensorrt] model.onnx fixes the batch at 1: the engine's profile takes batch 1" in err
    if not HAS_TENSORRT:
        assert code == 2 and "TensorRT is not installed" in err


def test_the_standard_plugins_are_registered_before_parsing(tmp_path):
    """The parser builds DeformConv from libnvinfer_plugin's ModulatedDeformConv2d creator."""
    model = onnx.load(str(_model_dir(tmp_path, "onnx") / "model.onnx"))
    trt = TensorRTCalls()
    _parse(trt, network=None, model=model, onnx_path=tmp_path / "model.onnx", log=None)
    assert trt.calls == ["init_libnvinfer_plugins('')", "OnnxParser", "parse"]
    with pytest.raises(EngineBuildError, match="standard plugins"):
        _parse(TensorRTCalls(plugins_ok=False), None, model, tmp_path / "model.onnx", None)


def test_a_refused_timing_cache_is_an_error(tmp_path):
    class Config:
        def __init__(self, accepts: bool) -> None:
            self.accepts = accepts

        def create_timing_cache(self, data):
            return object()

        def set_timing_cache(self, cache, ignore_mismatch):
            assert ignore_mismatch is False
            return self.accepts

    path = tmp_path / "timing.cache"
    path.write_bytes(b"from another GPU")
    assert _load_timing_cache(Config(accepts=True), path) is not None
    with pytest.raises(EngineBuildError, match=r"refused the timing cache .*timing.cache.*delete it"):
        _load_timing_cache(Config(accepts=False), path)


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_without_tensorrt_the_build_says_so(tmp_path, capsys):
    model_dir = _model_dir(tmp_path, "plugin")
    assert export_main(["tensorrt", "--onnx", str(model_dir), "--out", str(model_dir)]) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err
    assert not (model_dir / "model.plan").exists()


@pytest.mark.slow  # the build matrix: benchmarks/gpu_check.sh --slow (the quick run builds one fp16 engine)
@pytest.mark.tensorrt
@needs_tensorrt
@pytest.mark.parametrize("dcn", ["plugin", "onnx"])
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_build_verify_and_serve_the_tiny_model(tiny_weights, tmp_path, capsys, dcn, fp16):
    from dyhead_serve.runtime.loader import load_backend
    from dyhead_serve.runtime.options import ModelOptions

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
    backend = load_backend(ModelOptions(tmp_path, backend="tensorrt"))
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
    (cache,) = tmp_path.glob("timing-trt*.cache")
    assert cache.stat().st_size > 0


def _as_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with its float initializers stored as float16 (types only matter here)."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype("float16"), init.name))
    return model


def test_the_graph_precision_is_read_from_the_onnx_itself(tmp_path):
    model = onnx.load(str(_model_dir(tmp_path, "onnx") / "model.onnx"))
    assert graph_precision(model) == "fp32"
    assert graph_precision(_as_float16(model)) == "fp16"
    cast = onnx.load(str(tmp_path / "model.onnx"))
    cast.graph.node.append(onnx.helper.make_node("Cast", ["images"], ["half"], to=onnx.TensorProto.FLOAT16))
    assert graph_precision(cast) == "fp16"


@pytest.mark.parametrize(
    ("graph", "asked", "version", "error"),
    [
        ("fp32", "fp32", "11.4.0.1", None),
        ("fp16", "fp16", "11.4.0.1", None),
        ("fp16", "fp16", "10.12.0.36", None),
        ("fp32", "fp16", "10.11.0.33", None),  # weakly typed: the FP16 flag makes it
        ("fp32", "fp16", "10.12.0.36", "float32 graph, and TensorRT 10.12.0.36 builds strongly typed"),
        ("fp32", "fp16", "11.4.0.1", "float32 graph, and TensorRT 11.4.0.1 builds strongly typed"),
        ("fp16", "fp32", "10.11.0.33", "float16 graph: an fp32 engine needs the float32 ONNX"),
        ("fp16", "fp32", "11.4.0.1", "float16 graph: an fp32 engine needs the float32 ONNX"),
    ],
)
def test_a_strongly_typed_build_needs_the_onnx_of_its_precision(graph, asked, version, error):
    if error is None:
        check_graph_precision(graph, asked, version, "exported/atss", "plugin")
        return
    with pytest.raises(EngineBuildError, match=error) as info:
        check_graph_precision(graph, asked, version, "exported/atss", "plugin")
    assert f"dyhead-export onnx --precision {asked} --dcn plugin" in str(info.value)


@pytest.mark.parametrize(
    ("version", "fp16", "flags", "calls"),
    [
        # weakly typed 10.x: no creation flag; FP16 builder flag, or TF32 cleared
        ("10.11.0.33", True, 1 << 3, ["set_flag(FP16)"]),
        ("10.11.0.33", False, 1 << 3, ["clear_flag(TF32)"]),
        # 10.12 on: STRONGLY_TYPED (1 << 1), no precision flag; fp32 without TF32
        ("10.12.0.36", True, 1 << 1 | 1 << 3, []),
        ("10.14.1.48", False, 1 << 1 | 1 << 3, ["clear_flag(TF32)"]),
        # 11.x: STRONGLY_TYPED is 0 (kept, ignored), PREFER_AOT is 2; there is no FP16 flag to set
        ("11.4.0.1", True, 1 << 0 | 1 << 2, []),
        ("11.4.0.1", False, 1 << 0 | 1 << 2, ["clear_flag(TF32)"]),
    ],
)
def test_the_flags_asked_for_each_tensorrt_version(version, fp16, flags, calls):
    """Call-order test with a recording stand-in (tests/tensorrt_calls.py, enum values from
    TensorRT's headers): it checks the flags our build asks for, not what TensorRT builds."""
    from dyhead_serve.runtime.tensorrt_compat import builds_strongly_typed

    trt = TensorRTFlags(version)
    strongly_typed = builds_strongly_typed(version)
    assert network_flags(trt, strongly_typed, "aot", "plugin") == (flags, True)
    configure_precision(trt, trt.config(), fp16, strongly_typed)
    assert trt.calls == calls


def test_the_jit_preference_and_graphs_without_the_plugin():
    """Call-order test (recording stand-in): the plugin flag only for plugin graphs."""
    assert network_flags(TensorRTFlags("11.4.0.1"), True, "jit", "plugin") == (1 << 0 | 1 << 1, True)
    assert network_flags(TensorRTFlags("10.14.1.48"), True, "jit", "onnx") == (1 << 1, False)
    assert network_flags(TensorRTFlags("10.11.0.33"), False, "aot", None) == (0, False)


@pytest.mark.parametrize(
    ("version", "leaks"),
    [
        ("10.14.1.48", False),
        ("11.0.0.114", False),
        ("11.1.0.106", True),
        ("11.2.1.2", True),
        ("11.2.2.1", False),
    ],
)
def test_aot_plugins_give_way_to_jit_where_they_leak(version, leaks):
    impl, why = plugin_impl_for("aot", version)
    assert impl == ("jit" if leaks else "aot")
    assert (why is not None) == leaks
    if why:
        assert "NVIDIA/TensorRT#4849" in why and "JIT implementation" in why
    assert plugin_impl_for("jit", version) == ("jit", None)


def test_the_timing_cache_name_follows_the_kernels(monkeypatch):
    import importlib.metadata

    from dyhead_serve.plugins import mdcn_kernel

    triton = importlib.metadata.version("triton")
    name = timing_cache_name("10.14.1.48", "plugin", "aot")
    assert name.startswith(f"timing-trt10.14.1.48-triton{triton}-dyhead-modulateddeformconv2d1-aot-tiles")
    assert name.endswith(".cache") and "/" not in name
    assert timing_cache_name("10.14.1.48", "plugin", "jit") != name
    assert timing_cache_name("10.14.1.48", "onnx", "aot") == "timing-trt10.14.1.48.cache"
    monkeypatch.setattr(mdcn_kernel, "TILES", mdcn_kernel.TILES[:2])
    assert timing_cache_name("10.14.1.48", "plugin", "aot") != name


def test_an_fp16_build_of_a_float32_graph_on_tensorrt_11_says_which_onnx_to_export(tmp_path, monkeypatch):
    """Checked from the graph before the GPU, the parser or the builder are asked for anything
    (the stand-in module answers only its version: any other call would fail the test)."""
    from dyhead_serve.export import tensorrt_build

    model_dir = _model_dir(tmp_path, "onnx")
    monkeypatch.setattr(tensorrt_build, "_import_tensorrt", lambda: TensorRTFlags("11.4.0.1"))
    options = tensorrt_build.BuildOptions(PROFILES["small"], fp16=True)
    with pytest.raises(EngineBuildError, match="an fp16 engine needs the float16 ONNX") as info:
        tensorrt_build.build_engine(model_dir, tmp_path / "out", options)
    assert "dyhead-export onnx --precision fp16 --dcn onnx" in str(info.value)
    assert not (tmp_path / "out").exists()
