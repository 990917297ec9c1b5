"""ONNX export: dynamic shapes, the verification built into the export, the plugin flavour."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from PIL import Image

from dyhead_serve.cli.export import main as export_main
from dyhead_serve.data.sample_image import synthetic_photo
from dyhead_serve.export.onnx_export import ExportError, export_onnx
from dyhead_serve.export.tensorrt_build import graph_input_dims
from dyhead_serve.export.verify import compare_backends
from dyhead_serve.pipeline.preprocess import preprocess
from dyhead_serve.plugins.schema import MDCN_SCHEMA
from dyhead_serve.runtime.artifact import ModelArtifact
from dyhead_serve.runtime.export_command import override_flags
from dyhead_serve.runtime.loader import load_backend, load_torch_backend
from dyhead_serve.runtime.onnxruntime_backend import OnnxRuntimeBackend
from dyhead_serve.runtime.options import ModelOptions
from tests.conftest import TINY_OVERRIDES


@pytest.fixture(scope="module")
def tiny_backend(tiny_weights):
    return load_torch_backend("dyhead_r50_atss_fpn_1x", tiny_weights, device="cpu", overrides=TINY_OVERRIDES)


@pytest.fixture(scope="module")
def exported(tiny_backend, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    export_onnx(tiny_backend, out, provenance={"weights_sha256": "test"})
    return out


def test_dynamic_batch_and_sizes_match_pytorch(tiny_backend, exported):
    ort_backend = OnnxRuntimeBackend(exported, device="cpu")
    torch.manual_seed(0)
    for shape in [(1, 3, 128, 128), (1, 3, 256, 384), (1, 3, 384, 256), (2, 3, 256, 256)]:
        images = torch.randn(*shape)
        sizes = torch.tensor([list(shape[2:])] * shape[0])
        ref = tiny_backend.infer(images, sizes)
        got = ort_backend.infer(images, sizes)
        assert set(got) == {"logits", "deltas", "centerness"}
        for name in ref:
            assert got[name].shape == ref[name].shape
            torch.testing.assert_close(got[name], ref[name], rtol=1e-3, atol=1e-3)


def test_model_json_records_the_contract(tiny_backend, exported):
    meta = json.loads((exported / "model.json").read_text())
    assert meta["input_spec"]["channel_order"] == "BGR"
    assert meta["input_spec"]["size_divisibility"] == 128
    assert len(meta["class_names"]) == 5
    assert meta["decoder"]["type"] == "dense" and meta["decoder"]["spec"]["kind"] == "atss"
    assert meta["inputs"][0]["name"] == "images" and meta["inputs"][0]["shape"] == [
        "batch",
        3,
        "height",
        "width",
    ]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "deltas", "centerness"]
    # anchors per image follow the image size: the outputs' second extent stays dynamic
    assert all(o["shape"][0] == "batch" and isinstance(o["shape"][1], str) for o in meta["outputs"])
    assert meta["provenance"]["opset"] == 19 and meta["provenance"]["weights_sha256"] == "test"
    graph = onnx.load(str(exported / "model.onnx"))
    ops = {n.op_type for n in graph.graph.node}
    assert "DeformConv" in ops
    # the larger-offset-map read is in the graph: offsets are reshaped and sliced per image
    assert {"Slice", "Reshape"} <= ops


def test_same_detections_through_every_backend(tiny_backend, exported):
    # Padding gives many exactly tied scores (constant input, constant features) whose order is
    # arbitrary; a 256x256 image fills the padded input.
    image = synthetic_photo(256, 256, seed=3)
    report = compare_backends(tiny_backend, OnnxRuntimeBackend(exported), image)
    assert report.ok, report.format()
    assert report.num_reference > 0


def test_plugin_graph_nodes_follow_the_plugin_schema(tiny_backend, tmp_path):
    export_onnx(tiny_backend, tmp_path, dcn="plugin")
    graph = onnx.load(str(tmp_path / "model.onnx"))
    nodes = [n for n in graph.graph.node if n.op_type == MDCN_SCHEMA.name]
    assert len(nodes) == 2 * 3 * 5 - 2 * 2  # 2 DyHead blocks, 5 levels, 3 convs less the missing neighbours
    assert not [n for n in graph.graph.node if n.op_type == "DeformConv"]
    declared = {a.name: a for a in MDCN_SCHEMA.attributes}
    for node in nodes:
        assert node.domain == MDCN_SCHEMA.namespace
        assert len(node.input) == len(MDCN_SCHEMA.inputs) and len(node.output) == len(MDCN_SCHEMA.outputs)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs.pop("plugin_namespace") == MDCN_SCHEMA.namespace.encode()
        assert attrs.pop("plugin_version") == MDCN_SCHEMA.version.encode()
        assert set(attrs) == set(declared)
        for name, value in attrs.items():
            spec = declared[name]
            if spec.kind == "ints":
                assert len(value) == spec.length
            else:
                assert isinstance(value, int)
        assert attrs["padding"] == [1, 1] and attrs["dilation"] == [1, 1] and attrs["groups"] == 1
    assert sorted(
        {tuple(onnx.helper.get_attribute_value(a)) for n in nodes for a in n.attribute if a.name == "stride"}
    )
    assert any(o.domain == MDCN_SCHEMA.namespace for o in graph.opset_import)


def test_export_rejects_bad_arguments(tiny_backend, tmp_path):
    with pytest.raises(ExportError, match="opset"):
        export_onnx(tiny_backend, tmp_path, opset=17)
    with pytest.raises(ExportError, match="dcn"):
        export_onnx(tiny_backend, tmp_path, dcn="cuda")


def test_export_cli_writes_and_verifies(tiny_weights, tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.fromarray(synthetic_photo(256, 384, seed=4)).save(image)
    overrides = override_flags(TINY_OVERRIDES)
    code = export_main(
        ["onnx", "--config", "dyhead_r50_atss_fpn_1x", "--weights", str(tiny_weights), "--out", str(tmp_path),
         "--verify-image", str(image), *overrides]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "ok: wrote" in out and "logits" in out
    backend = load_backend(ModelOptions(tmp_path))
    assert backend.name == "onnxruntime" and backend.class_names == [f"class_{i}" for i in range(5)]
    code = export_main(["onnx", "--config", "dyhead_r50_atss_fpn_1x", "--out", str(tmp_path)])
    assert code == 2


def test_external_weights_are_one_copy_for_onnxruntime_and_torch(tiny_weights, tmp_path, capsys):
    out = tmp_path / "shared"
    code = export_main(
        ["onnx", "--config", "dyhead_r50_atss_fpn_1x", "--weights", str(tiny_weights), "--out", str(out),
         "--external-weights", *override_flags(TINY_OVERRIDES)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().out
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False)
    inline = sum(len(t.raw_data) for t in graph.graph.initializer)
    assert inline < 0.01 * (out / "model.safetensors").stat().st_size
    assert ModelArtifact.load(out / "model.json").provenance["weights_file"] == "model.safetensors"
    image = synthetic_photo(256, 384, seed=4)
    torch_backend = load_backend(
        ModelOptions(
            config="dyhead_r50_atss_fpn_1x",
            weights=out / "model.safetensors",
            device="cpu",
            overrides=tuple(TINY_OVERRIDES),
        )
    )
    report = compare_backends(torch_backend, load_backend(ModelOptions(out)), image)
    assert report.ok, report.format()


class _Perturbed:
    """A backend that shifts the box deltas: what a wrong export would look like."""

    def __init__(self, inner, shift: float) -> None:
        self.inner, self.shift = inner, shift
        self.name, self.model_name, self.precision = "perturbed", inner.model_name, "fp32"
        self.input_spec, self.class_names, self.decoder, self.device = (
            inner.input_spec, inner.class_names, inner.decoder, inner.device,
        )  # fmt: skip

    def infer(self, images, image_sizes):
        out = dict(self.inner.infer(images, image_sizes))
        out["deltas"] = out["deltas"] + self.shift
        return out


@pytest.mark.parametrize("shift", [0.002, 0.5])
def test_verification_catches_a_wrong_export(tiny_backend, exported, shift):
    report = compare_backends(
        tiny_backend, _Perturbed(OnnxRuntimeBackend(exported), shift), synthetic_photo(256, 256)
    )
    assert not report.ok
    assert report.noise_floor is not None  # the float64 check ran and still refused it


def _narrow_rcnn():
    overrides = [
        "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.DYHEAD.CHANNELS", "32", "MODEL.DYHEAD.NUM_CONVS", "1", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
        "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
        "MODEL.RPN.PRE_NMS_TOPK_TEST", "100",
    ]  # fmt: skip
    torch.manual_seed(0)
    return load_torch_backend("dyhead_r50_rcnn_fpn_1x", None, device="cpu", overrides=overrides)


def test_rcnn_float64_reference_runs():
    """The verification's float64 twin (its fallback when float32 rounding exceeds a tolerance)
    runs Faster R-CNN: boxes are decoded in float32 whatever the model's dtype, and NMS took them
    with float64 logits (a dtype error that failed `dyhead-export onnx` on random weights)."""
    from dyhead_serve.export.verify import _float64_twin

    backend = _narrow_rcnn()
    batch = preprocess([synthetic_photo(160, 224)], backend.input_spec)
    reference = backend.infer(batch.images, batch.image_sizes_tensor())
    twin = _float64_twin(backend).infer(batch.images, batch.image_sizes_tensor())
    assert twin.keys() == reference.keys()
    for name, value in twin.items():
        assert value.dtype == reference[name].dtype and value.shape == reference[name].shape, name


def test_rcnn_exports_with_a_fixed_batch_and_runs_batches_in_chunks(tmp_path):
    """GeneralizedRCNN's forward loops over images: a dynamic-batch trace would be wrong for N > 1."""
    backend = _narrow_rcnn()
    export_onnx(backend, tmp_path)
    # what `dyhead-export tensorrt` reads to fit its engine profile: batch 1, any padded size
    assert graph_input_dims(onnx.load(str(tmp_path / "model.onnx"))) == [1, 3, "height", "width"]
    ort_backend = OnnxRuntimeBackend(tmp_path)
    assert ort_backend.session.get_inputs()[0].shape[0] == 1
    images = torch.randn(2, 3, 128, 192)
    sizes = torch.tensor([[128, 192], [100, 150]])
    _assert_same_outputs(backend, ort_backend, images, sizes)


def _inferred_dims(model: onnx.ModelProto) -> dict[str, list[int | str] | None]:
    """The outputs' dims as ONNX shape inference derives them, the declared ones set aside."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    found: dict[str, list[int | str] | None] = {}
    for output in inferred.graph.output:
        tensor = output.type.tensor_type
        found[output.name] = (
            [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]
            if tensor.HasField("shape")
            else None
        )
    return found


def test_rcnn_graph_has_static_proposal_and_detection_dims(tmp_path):
    """The RPN padded its NMS output by a run-time amount (post_nms_topk - kept), which ONNX shape
    inference and TensorRT's parser see as a data-dependent extent: proposals were [1, ?, ?] and
    the ROI heads' logits and deltas [?, ?, ?]. They are padded to the fixed slot count now."""
    backend = _narrow_rcnn()
    export_onnx(backend, tmp_path)
    model = onnx.load(str(tmp_path / "model.onnx"))
    dims = _inferred_dims(model)
    assert dims["proposals"] == [1, 50, 4]
    assert dims["logits"] == [1, 50, 4] and dims["deltas"] == [1, 50, 12]
    declared = {o["name"]: o["shape"] for o in json.loads((tmp_path / "model.json").read_text())["outputs"]}
    assert declared == {
        "proposals": [1, 50, 4], "num_proposals": [1], "logits": [1, 50, 4], "deltas": [1, 50, 12]
    }  # fmt: skip


def _assert_same_outputs(backend, other, images, sizes):
    ref, got = backend.infer(images, sizes), other.infer(images, sizes)
    for name in ref:
        assert got[name].shape == ref[name].shape
        torch.testing.assert_close(got[name].float(), ref[name].float(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("size", [(64, 64), (320, 448)], ids=["smaller", "larger"])
def test_rcnn_graph_keeps_the_pre_nms_top_k_at_other_sizes_than_traced(tmp_path, size):
    """The RPN keeps min(anchors, k) per level: traced at 128x192, the graph must compute it at run
    time. With the tracing size's choice as a constant, ONNX Runtime failed at 64x64 (k = 100 on a
    level of 48 anchors) and levels with fewer than k anchors when traced kept all their anchors
    on larger images."""
    backend = _narrow_rcnn()
    export_onnx(backend, tmp_path)
    height, width = size
    images = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(1))
    _assert_same_outputs(backend, OnnxRuntimeBackend(tmp_path), images, torch.tensor([[height, width]]))
