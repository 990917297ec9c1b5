"""The TensorRT backend: engine compatibility checks and loader wiring run here; running an engine
needs TensorRT and a GPU."""

from __future__ import annotations

import json

import pytest

from dyhead_serve.runtime.base import BackendError
from dyhead_serve.runtime.loader import load_backend
from dyhead_serve.runtime.tensorrt_compat import (
    ENGINE_KEY,
    check_engine_compatibility,
    check_input_shape,
    deserialize_engine,
)
from tests.hardware import HAS_TENSORRT

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
        "decoder": {"type": "dense", "spec": {}},
        "provenance": {ENGINE_KEY: RECORD},
    }  # fmt: skip
    (tmp_path / "model.json").write_text(json.dumps(meta))
    return tmp_path


def test_tensorrt_backend_without_a_plan_says_how_to_build_one(tmp_path):
    with pytest.raises(BackendError, match=r"no model.plan; build one with `dyhead-export tensorrt --onnx"):
        load_backend(_exported_dir(tmp_path), backend="tensorrt")


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_tensorrt_backend_without_tensorrt_says_so(tmp_path):
    model_dir = _exported_dir(tmp_path)
    (model_dir / "model.plan").write_bytes(b"not an engine")
    with pytest.raises(BackendError, match="TensorRT is not installed"):
        load_backend(model_dir, backend="tensorrt")


def test_inputs_must_be_multiples_of_the_size_divisibility_and_inside_the_profile():
    low, high = (1, 3, 128, 128), (4, 3, 1408, 1408)
    check_input_shape("images", (2, 3, 896, 1408), low, high, 128)
    with pytest.raises(BackendError, match=r"images of 800x1333: height and width must be multiples of 128"):
        check_input_shape("images", (1, 3, 800, 1333), low, high, 128)
    with pytest.raises(BackendError, match=r"outside the engine's profile"):
        check_input_shape("images", (8, 3, 896, 1408), low, high, 128)
    check_input_shape("image_sizes", (2, 2), (1, 2), (4, 2), 128)  # not an image: no divisibility


class _RecordingRuntime:
    """Records what loading an engine asks of TensorRT, in order (a stand-in for the ``tensorrt``
    module in a test of that order; it loads nothing)."""

    def __init__(self, plugins_ok: bool = True) -> None:
        self.calls: list[str] = []
        self.plugins_ok = plugins_ok

    def init_libnvinfer_plugins(self, logger, namespace):
        self.calls.append(f"init_libnvinfer_plugins({namespace!r})")
        return self.plugins_ok

    def Runtime(self, logger):  # noqa: N802 (TensorRT's name)
        self.calls.append("Runtime")
        calls = self.calls

        class Runtime:
            def deserialize_cuda_engine(self, plan):
                calls.append("deserialize_cuda_engine")
                return "engine"

        return Runtime()


def test_the_standard_plugins_are_registered_before_an_engine_is_deserialised():
    """An engine built from DeformConv nodes holds libnvinfer_plugin layers: their creator must be
    registered when it is loaded."""
    trt = _RecordingRuntime()
    _, engine = deserialize_engine(trt, None, b"plan")
    assert engine == "engine"
    assert trt.calls == ["init_libnvinfer_plugins('')", "Runtime", "deserialize_cuda_engine"]
    with pytest.raises(BackendError, match="standard plugins"):
        deserialize_engine(_RecordingRuntime(plugins_ok=False), None, b"plan")
