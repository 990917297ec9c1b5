"""Float16 ONNX: which nodes run in float16, the casts at the borders, both DCN flavours, external
weights, and the exported folder's verification at float16 tolerances."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from dyhead_serve.data.synthetic import render_image
from dyhead_serve.export.external_weights import WEIGHTS_FILE
from dyhead_serve.export.fp16 import convert_folder_to_float16, convert_to_float16, value_types
from dyhead_serve.export.onnx_export import ExportError, export_onnx
from dyhead_serve.export.verify import FP16_TOLERANCES, Tolerances, compare_backends, tolerances_for
from dyhead_serve.plugins.schema import MDCN_SCHEMA
from dyhead_serve.runtime.artifact import ModelArtifact
from dyhead_serve.runtime.loader import load_backend, load_torch_backend
from dyhead_serve.runtime.onnxruntime_backend import OnnxRuntimeBackend
from dyhead_serve.runtime.options import ModelOptions
from tests.conftest import TINY_OVERRIDES

F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "dyhead_serve" / "zoo_files" / "default"


def _small_graph(running_var: float = 1.0) -> onnx.ModelProto:
    """images -> Conv -> BatchNormalization -> InstanceNormalization -> Relu -> Conv -> out, and
    a shape-arithmetic chain (Shape -> Cast float -> Mul -> Cast int) that sizes a Reshape."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.1, (4, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, (2, 4, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.ones(4, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(4, np.float32), "beta"),
        numpy_helper.from_array(np.full(4, running_var, np.float32), "var"),
        numpy_helper.from_array(np.array([1.0], np.float32), "one"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
    ]
    nodes = [
        helper.make_node("Conv", ["images", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "beta", "var"], ["bn"], name="bn"),
        helper.make_node("InstanceNormalization", ["bn", "gamma", "beta"], ["norm"], name="norm"),
        helper.make_node("Relu", ["norm"], ["relu"], name="relu"),
        helper.make_node("Conv", ["relu", "w2"], ["c2"], name="conv2"),
        helper.make_node("Shape", ["c2"], ["shape"], start=0, end=1, name="shape"),
        helper.make_node("Cast", ["shape"], ["shape_f"], to=F32, name="to_float"),
        helper.make_node("Mul", ["shape_f", "one"], ["scaled"], name="scale"),
        helper.make_node("Cast", ["scaled"], ["batch"], to=TensorProto.INT64, name="to_int"),
        helper.make_node("Concat", ["batch", "minus_one"], ["new_shape"], axis=0, name="concat"),
        helper.make_node("Reshape", ["c2", "new_shape"], ["out"], name="flatten"),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("images", F32, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", F32, [1, 128])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {
        v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]
    }
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return types


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def test_heavy_ops_run_in_float16_normalisations_and_shape_arithmetic_in_float32():
    model, report = convert_to_float16(_small_graph())
    onnx.checker.check_model(model, full_check=True)
    types = _types(model)
    conv1, conv2, norm = _node(model, "conv1"), _node(model, "conv2"), _node(model, "norm")
    assert [types[x] for x in conv1.input] == [F16, F16]  # images cast to float16, weights stored so
    assert types[conv1.output[0]] == F16 and types[conv2.output[0]] == F16
    assert types[_node(model, "bn").output[0]] == F16  # a follower of a float16 conv
    assert [types[x] for x in norm.input] == [F32, F32, F32] and types[norm.output[0]] == F32
    assert types[_node(model, "relu").output[0]] == F32  # follows its float32 input
    assert types[_node(model, "scale").output[0]] == F32  # shape arithmetic is left alone
    assert model.graph.input[0].type.tensor_type.elem_type == F32
    assert model.graph.output[0].type.tensor_type.elem_type == F32 and types["out"] == F32
    # gamma/beta are read by the float16 batch norm and the float32 instance norm: stored twice
    names = {i.name: i.data_type for i in model.graph.initializer}
    assert names["gamma"] == F32 and names["gamma__fp16"] == F16 and names["w1"] == F16
    assert report.weights_fraction > 0.5 and report.casts >= 3

    images = np.random.default_rng(1).normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(_small_graph().SerializeToString(), providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (a,), (b,) = ref.run(None, {"images": images}), got.run(None, {"images": images})
    assert b.dtype == np.float32 and b.shape == a.shape
    np.testing.assert_allclose(b, a, atol=2e-2, rtol=2e-2)


def test_a_constant_beyond_float16s_range_keeps_its_node_in_float32():
    model, report = convert_to_float16(_small_graph(running_var=1e5))
    types = _types(model)
    assert types[_node(model, "bn").output[0]] == F32
    assert {i.name: i.data_type for i in model.graph.initializer}["var"] == F32
    assert report.unrepresentable == ["bn"]


def test_an_output_computed_in_float16_is_cast_back_under_its_name():
    model = _small_graph()
    del model.graph.node[5:]
    model.graph.node[-1].output[0] = "out"
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("out", F32, [1, 2, 8, 8]))
    converted, _ = convert_to_float16(model)
    onnx.checker.check_model(converted, full_check=True)
    types = _types(converted)
    assert types["out"] == F32 and types["out__fp16"] == F16
    cast = next(n for n in converted.graph.node if list(n.output) == ["out"])
    assert cast.op_type == "Cast" and list(cast.input) == ["out__fp16"]


@pytest.fixture(scope="module")
def tiny_backend(tiny_weights):
    return load_torch_backend("dyhead_r50_atss_fpn_1x", tiny_weights, device="cpu", overrides=TINY_OVERRIDES)


@pytest.fixture(scope="module")
def fp16_export(tiny_backend, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp16")
    export_onnx(tiny_backend, out, precision="fp16", external_weights=True)
    return out


def test_fp16_export_records_its_precision_and_runs_in_onnxruntime(tiny_backend, fp16_export):
    artifact = ModelArtifact.load(fp16_export / "model.json")
    assert artifact.precision == "fp16"
    assert artifact.provenance["float16"]["weights_fp16_fraction"] > 0.9
    assert "InstanceNormalization" in artifact.provenance["float16"]["float32_ops"]
    assert [t["dtype"] for t in artifact.inputs + artifact.outputs] == ["float32"] * 4
    backend = OnnxRuntimeBackend(fp16_export, device="cpu")
    assert backend.precision == "fp16"
    images = torch.randn(1, 3, 256, 384)
    got = backend.infer(images, torch.tensor([[256, 384]]))
    ref = tiny_backend.infer(images, torch.tensor([[256, 384]]))
    assert {k: (v.dtype, v.shape) for k, v in got.items()} == {k: (v.dtype, v.shape) for k, v in ref.items()}


def test_verification_at_fp16_tolerances_passes_the_embedded_model_and_refuses_a_wrong_one(tmp_path):
    """The embedded (trained) model in float16 is within the float16 tolerances of PyTorch on a
    generated shapes image. The tiny test model's random weights give activations in the
    thousands, where float16's spacing (1 to 2) moves its offset masks' logits by whole units:
    the verification refuses that graph, as it should."""
    convert_folder_to_float16(DEFAULT_DIR, tmp_path / "fp16")
    image = render_image(np.random.default_rng(7), 320, 256)[0]
    torch_backend = load_backend(ModelOptions("default", backend="torch", device="cpu"))
    report = compare_backends(
        torch_backend, OnnxRuntimeBackend(tmp_path / "fp16"), image, tolerances_for("fp16")
    )
    assert report.ok, report.format()
    assert report.num_compared > 5 and 0 < max(report.raw_max_abs.values()) < 0.05
    assert tolerances_for("fp16").box_px == 2.0


def test_fp16_export_with_external_weights_keeps_float32_weights_in_the_safetensors_file(fp16_export):
    model = onnx.load(str(fp16_export / "model.onnx"), load_external_data=False)
    external = [i for i in model.graph.initializer if i.data_location == TensorProto.EXTERNAL]
    halves = [i for i in model.graph.initializer if i.data_type == F16]
    assert external and all(i.data_type == F32 for i in external)  # e.g. the norms' affine weights
    assert {e.value for i in external for e in i.external_data if e.key == "location"} == {WEIGHTS_FILE}
    assert len(halves) > len(external)  # the convolutions' weights, inside model.onnx


def test_plugin_nodes_take_and_give_float16(tiny_backend, tmp_path):
    export_onnx(tiny_backend, tmp_path, dcn="plugin", batch=1, precision="fp16")
    model = onnx.load(str(tmp_path / "model.onnx"))
    types = value_types(model)
    plugins = [n for n in model.graph.node if n.domain == MDCN_SCHEMA.namespace]
    assert plugins
    for node in plugins:
        # the plugin's kernel takes every input and the output in one dtype (float32 or float16)
        assert [types[x] for x in node.input] == [F16] * len(MDCN_SCHEMA.inputs), node.name
    assert json.loads((tmp_path / "model.json").read_text())["provenance"]["precision"] == "fp16"


def test_deformconv_nodes_run_in_float16(fp16_export):
    model = onnx.load(str(fp16_export / "model.onnx"))
    types = _types(model)
    nodes = [n for n in model.graph.node if n.op_type == "DeformConv"]
    assert nodes and all(types[n.output[0]] == F16 for n in nodes)
    assert all(types[x] == F16 for n in nodes for x in n.input if x)


def test_precision_is_checked_and_tolerances_follow_it(tiny_backend, tmp_path):
    with pytest.raises(ExportError, match="--precision must be one of"):
        export_onnx(tiny_backend, tmp_path, precision="bf16")
    assert tolerances_for("fp16") == FP16_TOLERANCES and tolerances_for("fp32") == Tolerances()
    with pytest.raises(ValueError, match="precision"):
        tolerances_for("int8")


def test_a_fp32_export_records_fp32(tiny_backend, tmp_path):
    export_onnx(tiny_backend, tmp_path)
    assert ModelArtifact.load(tmp_path / "model.json").precision == "fp32"
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert all(i.data_type != F16 for i in model.graph.initializer)
