"""The TensorRT backend: engine compatibility checks, input checks, the loading order and loader
wiring run here; running an engine (as deployment does: a fresh process, changing shapes) needs
TensorRT and a GPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from dyhead_serve.runtime.base import BackendError
from dyhead_serve.runtime.loader import load_backend
from dyhead_serve.runtime.options import ModelOptions
from dyhead_serve.runtime.tensorrt_compat import (
    ENGINE_KEY,
    check_engine_compatibility,
    check_input_shape,
    deserialize_engine,
)
from tests.conftest import one_class_dense_decoder
from tests.hardware import HAS_TENSORRT, needs_tensorrt
from tests.tensorrt_calls import TensorRTCalls

RECORD = {"tensorrt": "10.13.3.9", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def test_a_matching_engine_is_accepted():
    record = check_engine_compatibility({ENGINE_KEY: RECORD}, "m", "10.13.3.9", "NVIDIA H100 PCIe", "9.0")
    assert record == RECORD


@pytest.mark.parametrize(
    ("version", "capability", "message"),
    [
        ("10.14.1.48", "9.0", "built with TensorRT 10.13.3.9, this is TensorRT 10.14.1.48"),
        ("10.13.3.9", "8.9", r"compute capability 9.0\), this GPU is a L4 \(8.9\)"),
    ],
)
def test_a_foreign_engine_asks_for_a_rebuild(version, capability, message):
    with pytest.raises(BackendError, match=message) as info:
        check_engine_compatibility({ENGINE_KEY: RECORD}, "models/atss", version, "L4", capability)
    assert "rebuild it on this machine: dyhead-export tensorrt --onnx models/atss" in str(info.value)


def test_a_model_json_without_an_engine_record_is_refused():
    with pytest.raises(BackendError, match="does not describe a TensorRT engine"):
        check_engine_compatibility({"opset": 19}, "m", "10.13.3.9", "L4", "8.9")


def _exported_dir(tmp_path):
    meta = {
        "format": "dyhead-serve/model@1",
        "name": "m",
        "input_spec": {"channel_order": "BGR", "pixel_mean": [0, 0, 0], "pixel_std": [1, 1, 1],
                       "min_size": 800, "max_size": 1333, "size_divisibility": 128},
        "class_names": ["a"],
        "decoder": one_class_dense_decoder(),
        "provenance": {ENGINE_KEY: RECORD},
    }  # fmt: skip
    (tmp_path / "model.json").write_text(json.dumps(meta))
    return tmp_path


def test_tensorrt_backend_without_a_plan_says_how_to_build_one(tmp_path):
    with pytest.raises(BackendError, match=r"no model.plan; build one with `dyhead-export tensorrt --onnx"):
        load_backend(ModelOptions(_exported_dir(tmp_path), backend="tensorrt"))


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_tensorrt_backend_without_tensorrt_says_so(tmp_path):
    model_dir = _exported_dir(tmp_path)
    (model_dir / "model.plan").write_bytes(b"not an engine")
    with pytest.raises(BackendError, match="TensorRT is not installed"):
        load_backend(ModelOptions(model_dir, backend="tensorrt"))


def test_inputs_must_be_multiples_of_the_size_divisibility_and_inside_the_profile():
    low, high = (1, 3, 128, 128), (4, 3, 1408, 1408)
    check_input_shape("images", (2, 3, 896, 1408), low, high, 128)
    with pytest.raises(BackendError, match=r"images of 800x1333: height and width must be multiples of 128"):
        check_input_shape("images", (1, 3, 800, 1333), low, high, 128)
    with pytest.raises(BackendError, match=r"outside the engine's profile"):
        check_input_shape("images", (8, 3, 896, 1408), low, high, 128)
    check_input_shape("image_sizes", (2, 2), (1, 2), (4, 2), 128)  # not an image: no divisibility


def test_the_standard_plugins_are_registered_before_an_engine_is_deserialised():
    """An engine built from DeformConv nodes holds libnvinfer_plugin layers: their creator must be
    registered when it is loaded."""
    trt = TensorRTCalls()
    _, engine = deserialize_engine(trt, None, b"plan")
    assert engine == "engine"
    assert trt.calls == ["init_libnvinfer_plugins('')", "Runtime", "deserialize_cuda_engine"]
    with pytest.raises(BackendError, match="standard plugins"):
        deserialize_engine(TensorRTCalls(plugins_ok=False), None, b"plan")


# What deployment does (TensorRT and a GPU): the engine of the tiny model with our plugin's AOT
# kernels, built once here, then served by processes that never saw the plugin code.

_FRESH_PROCESS = """
import sys, torch
from dyhead_serve.runtime.tensorrt_backend import TensorRTBackend

engine_dir, inputs_file, outputs_file = sys.argv[1:]
images, sizes = torch.load(inputs_file)
backend = TensorRTBackend(engine_dir)
outputs = backend.infer(images, sizes)
torch.save({name: value.cpu() for name, value in outputs.items()}, outputs_file)
loaded = [m for m in ("dyhead_serve.plugins", "tensorrt.plugin") if m in sys.modules]
assert not loaded, f"serving imported {loaded}"
"""


@pytest.fixture(scope="module")
def aot_engine(tiny_weights, tmp_path_factory):
    """The tiny ATSS model's fp32 engine with the plugin's AOT kernels ("small" profile)."""
    from dyhead_serve.cli.export import main as export_main
    from dyhead_serve.runtime.export_command import override_flags
    from tests.conftest import TINY_OVERRIDES

    out = tmp_path_factory.mktemp("aot-engine")
    argv = ["tensorrt", "--config", "dyhead_r50_atss_fpn_1x", "--weights", str(tiny_weights),
            "--out", str(out), "--profile", "small", "--dcn", "plugin", "--plugin-impl", "aot",
            "--no-verify", *override_flags(TINY_OVERRIDES)]  # fmt: skip
    assert export_main(argv) == 0
    return out


@pytest.mark.tensorrt
@needs_tensorrt
def test_an_aot_engine_serves_in_a_process_that_never_imports_the_plugin(aot_engine, tiny_weights, tmp_path):
    """The AOT kernels are PTX inside model.plan: loading and running it needs neither
    dyhead_serve.plugins nor tensorrt.plugin, and it computes what PyTorch computes."""
    from dyhead_serve.runtime.loader import load_torch_backend
    from tests.conftest import TINY_OVERRIDES

    torch.manual_seed(0)
    images, sizes = torch.randn(2, 3, 256, 384), torch.tensor([[256, 384], [200, 300]])
    torch.save((images, sizes), tmp_path / "inputs.pt")
    argv = [
        sys.executable,
        "-c",
        _FRESH_PROCESS,
        str(aot_engine),
        str(tmp_path / "inputs.pt"),
        str(tmp_path / "out.pt"),
    ]
    child = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert child.returncode == 0, child.stderr[-4000:]
    got = torch.load(tmp_path / "out.pt")
    reference = load_torch_backend(
        "dyhead_r50_atss_fpn_1x", tiny_weights, device="cpu", overrides=TINY_OVERRIDES
    ).infer(images, sizes)
    assert set(got) == set(reference)
    for name, value in reference.items():
        torch.testing.assert_close(got[name], value.float(), rtol=1e-3, atol=1e-3)


@pytest.mark.tensorrt
@needs_tensorrt
def test_changing_input_shapes_does_not_grow_device_memory(aot_engine):
    """AOT plugins have leaked a CUDA module per shape change (NVIDIA/TensorRT#4849): after a
    warm-up cycle, five more cycles through 20 shapes must leave the GPU's free memory as it was."""
    backend = load_backend(ModelOptions(aot_engine, backend="tensorrt"))
    sizes = (128, 256, 384, 512, 640)
    shapes = [(n, h, w) for n in (1, 2) for h in sizes for w in sizes][::2][:20]
    assert len(set(shapes)) == 20

    def cycle() -> None:
        for n, h, w in shapes:
            backend.infer(torch.randn(n, 3, h, w), torch.tensor([[h, w]] * n))
        torch.cuda.synchronize()
        torch.cuda.empty_cache()

    cycle()
    free_before = torch.cuda.mem_get_info()[0]
    for _ in range(5):
        cycle()
    lost = free_before - torch.cuda.mem_get_info()[0]
    print(f"device memory lost over 100 shape changes: {lost / 2**20:.1f} MiB")
    assert lost < 8 * 2**20


def test_versions_are_read_and_classified():
    from dyhead_serve.runtime.tensorrt_compat import aot_plugins_leak, builds_strongly_typed, tensorrt_version

    assert tensorrt_version("10.14.1.48") == (10, 14, 1, 48)
    assert tensorrt_version("11.2.1rc1") == (11, 2, 1)
    assert [builds_strongly_typed(v) for v in ("10.11.0.33", "10.12.0.36", "11.0.0.114")] == [
        False,
        True,
        True,
    ]
    leaky = ["11.1.0.106", "11.2.0.5", "11.2.1.2"]
    fine = ["10.16.0.72", "11.0.0.114", "11.2.2.1", "11.4.0.1"]
    assert [aot_plugins_leak(v) for v in leaky + fine] == [True] * 3 + [False] * 4


def test_an_aot_engine_is_refused_where_aot_plugins_leak():
    """An engine with our AOT kernels on TensorRT 11.1-11.2.1 (NVIDIA/TensorRT#4849) asks for a
    rebuild, which uses the JIT kernels there; a JIT or plugin-free engine loads."""
    record = {**RECORD, "tensorrt": "11.2.1.2", "plugin_impl": "aot"}
    with pytest.raises(BackendError, match=r"leaks a CUDA module .*NVIDIA/TensorRT#4849.*rebuild it"):
        check_engine_compatibility({ENGINE_KEY: record}, "m", "11.2.1.2", "NVIDIA H100 PCIe", "9.0")
    for impl in ("jit", None):
        ok = {**record, "plugin_impl": impl}
        assert check_engine_compatibility({ENGINE_KEY: ok}, "m", "11.2.1.2", "H100", "9.0") == ok
