"""The deformable conv and the leading offset read through torch.export and ONNX Script: both
flavours of node, dynamic sizes (no size of the example baked into the graph), and the same nodes
as the TorchScript exporter writes."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from dyhead_serve.ops import ModulatedDeformConv2d
from dyhead_serve.ops.onnx_node import deform_conv_node
from dyhead_serve.ops.onnx_symbolic import deform_conv_onnx_symbolic
from dyhead_serve.ops.onnx_translation import deform_conv_translation_table
from dyhead_serve.plugins.schema import MDCN_SCHEMA


class _ThreeLevels(torch.nn.Module):
    """DyHead's use of one offset map: computed on a level, applied to that level (stride 1),
    to the finer level (stride 2) and to the coarser level (stride 1, a smaller output than the
    map: the official leading read)."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = torch.nn.Conv2d(8, 27, 3, padding=1)
        self.same = ModulatedDeformConv2d(8, 4)
        self.from_finer = ModulatedDeformConv2d(8, 4, stride=2)
        self.coarser = ModulatedDeformConv2d(8, 4)

    def forward(self, finer: torch.Tensor, level: torch.Tensor, coarser: torch.Tensor):
        offset_mask = self.offset(level)
        offset, mask = offset_mask[:, :18], offset_mask[:, 18:].sigmoid()
        return (
            self.same(level, offset, mask),
            self.from_finer(finer, offset, mask),
            self.coarser(coarser, offset, mask),
        )


def _inputs(batch: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Level sizes as a stride-2 pyramid of an input of (8h, 8w): finer 2x, coarser half."""
    gen = torch.Generator().manual_seed(batch * 1000 + h * 10 + w)
    return tuple(torch.randn(batch, 8, s * h, s * w, generator=gen) for s in (4, 2, 1))  # type: ignore[return-value]


def _model() -> _ThreeLevels:
    torch.manual_seed(0)
    model = _ThreeLevels().eval()
    with torch.no_grad():
        model.offset.weight.mul_(20)  # offsets of a few pixels, many samples between pixels
    return model


def _export(model: torch.nn.Module, flavour: str, path) -> onnx.ModelProto:
    dim = torch.export.Dim
    batch, h, w = dim("batch", min=1), dim("h", min=1), dim("w", min=1)
    shapes = tuple({0: batch, 2: s * h, 3: s * w} for s in (4, 2, 1))
    with torch.no_grad():
        program = torch.export.export(model, _inputs(2, 3, 5), dynamic_shapes=shapes, strict=False)
    onnx_program = torch.onnx.export(
        program,
        dynamo=True,
        opset_version=19,
        custom_translation_table=deform_conv_translation_table(flavour, 19),
        input_names=["finer", "level", "coarser"],
        verbose=False,
    )
    assert onnx_program is not None
    onnx_program.save(str(path))
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("translation")
    model = _model()
    graphs = {flavour: _export(model, flavour, out / f"{flavour}.onnx") for flavour in ("onnx", "plugin")}
    return model, out, graphs


def test_graph_runs_at_other_sizes_and_batches_than_exported(exported):
    model, out, graphs = exported
    onnx.checker.check_model(graphs["onnx"], full_check=True)
    onnx.shape_inference.infer_shapes(graphs["onnx"], check_type=True, strict_mode=True)
    assert sum(n.op_type == "DeformConv" for n in graphs["onnx"].graph.node) == 3
    session = ort.InferenceSession(str(out / "onnx.onnx"), providers=["CPUExecutionProvider"])
    # exported at batch 2, 3x5: other batches, sizes, aspect ratios, and a 1x1 coarsest level
    for batch, h, w in [(1, 3, 5), (3, 2, 7), (2, 6, 4), (1, 1, 1)]:
        inputs = _inputs(batch, h, w)
        with torch.no_grad():
            expected = model(*inputs)
        feeds = {n: x.numpy() for n, x in zip(("finer", "level", "coarser"), inputs, strict=True)}
        got = session.run(None, feeds)
        for name, g, e in zip(("same", "from_finer", "coarser"), got, expected, strict=True):
            where = f"{name} at batch {batch}, {h}x{w}"
            assert g.shape == tuple(e.shape), where
            np.testing.assert_allclose(g, e.numpy(), rtol=1e-4, atol=1e-4, err_msg=where)


def test_coarser_level_reads_the_leading_values_in_the_graph(exported):
    """Not a crop: the coarser conv's offsets are the map's first 18*h*w values per image."""
    model, out, _ = exported
    session = ort.InferenceSession(str(out / "onnx.onnx"), providers=["CPUExecutionProvider"])
    finer, level, coarser = _inputs(2, 2, 3)
    with torch.no_grad():
        offset_mask = model.offset(level)
        offset = offset_mask[:, :18].reshape(2, -1)[:, : 18 * 2 * 3].reshape(2, 18, 2, 3)
        mask = offset_mask[:, 18:].sigmoid().reshape(2, -1)[:, : 9 * 2 * 3].reshape(2, 9, 2, 3)
        cropped = model.coarser(coarser, offset_mask[:, :18, :2, :3], offset_mask[:, 18:, :2, :3].sigmoid())
        expected = model.coarser(coarser, offset, mask)
    got = session.run(None, {"finer": finer.numpy(), "level": level.numpy(), "coarser": coarser.numpy()})[2]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)
    assert not np.allclose(got, cropped.numpy(), rtol=1e-2, atol=1e-2)


def _deform_nodes(graph: onnx.ModelProto, op_type: str) -> list[onnx.NodeProto]:
    return [n for n in graph.graph.node if n.op_type == op_type]


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def test_plugin_nodes_follow_the_schema(exported):
    _, _, graphs = exported
    graph = graphs["plugin"]
    onnx.checker.check_model(graph, full_check=True)
    nodes = _deform_nodes(graph, MDCN_SCHEMA.name)
    assert len(nodes) == 3 and not _deform_nodes(graph, "DeformConv")
    assert {(o.domain, o.version) for o in graph.opset_import} >= {(MDCN_SCHEMA.namespace, 1)}
    kinds = {onnx.AttributeProto.INTS: "ints", onnx.AttributeProto.INT: "int"}
    for node in nodes:
        assert node.domain == MDCN_SCHEMA.namespace
        assert len(node.input) == len(MDCN_SCHEMA.inputs) and len(node.output) == len(MDCN_SCHEMA.outputs)
        attrs = {a.name: a for a in node.attribute}
        assert onnx.helper.get_attribute_value(attrs.pop("plugin_namespace")) == b"dyhead"
        assert onnx.helper.get_attribute_value(attrs.pop("plugin_version")) == b"1"
        declared = {a.name: a.kind for a in MDCN_SCHEMA.attributes}
        assert {name: kinds[a.type] for name, a in attrs.items()} == declared
    assert sorted(tuple(_attributes(n)["stride"]) for n in nodes) == [(1, 1), (1, 1), (2, 2)]


def test_plugin_node_inputs_are_in_the_schemas_order(exported):
    """Each input where the schema puts it: the weight and bias initializers, the offset map with
    2 * kh * kw channels and the mask with kh * kw (attributes and counts alone would not show a
    swap)."""
    _, _, graphs = exported
    graph = onnx.shape_inference.infer_shapes(graphs["plugin"])
    initializers = {i.name: list(i.dims) for i in graph.graph.initializer}
    channels = {
        v.name: v.type.tensor_type.shape.dim[1].dim_value
        for v in graph.graph.value_info
        if len(v.type.tensor_type.shape.dim) == 4
    }
    slot = {name: MDCN_SCHEMA.inputs.index(name) for name in ("input", "offset", "mask", "weight", "bias")}
    for node in _deform_nodes(graph, MDCN_SCHEMA.name):
        weight = initializers[node.input[slot["weight"]]]
        assert len(weight) == 4
        assert initializers[node.input[slot["bias"]]] == weight[:1]
        taps = weight[2] * weight[3]
        assert node.input[slot["input"]] not in initializers
        assert channels[node.input[slot["offset"]]] == 2 * taps
        assert channels[node.input[slot["mask"]]] == taps


@pytest.mark.parametrize("flavour", ["onnx", "plugin"])
def test_both_exporters_write_the_same_nodes(exported, flavour, tmp_path):
    model, _, graphs = exported
    path = tmp_path / "torchscript.onnx"
    with deform_conv_onnx_symbolic(flavour, 19), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation
        torch.onnx.export(model, _inputs(1, 3, 5), str(path), dynamo=False, opset_version=19)
    op_type = "DeformConv" if flavour == "onnx" else MDCN_SCHEMA.name
    old, new = _deform_nodes(onnx.load(str(path)), op_type), _deform_nodes(graphs[flavour], op_type)
    assert [(n.domain, _attributes(n)) for n in new] == [(n.domain, _attributes(n)) for n in old]


def test_translation_table_rejects_what_it_cannot_write():
    with pytest.raises(ValueError, match="flavour"):
        deform_conv_translation_table("cuda", 19)
    with pytest.raises(ValueError, match="opset >= 19"):
        deform_conv_translation_table("onnx", 18)
    with pytest.raises(ValueError, match="needs a mask"):
        deform_conv_node(
            "plugin", kernel_shape=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1),
            groups=1, offset_groups=1, use_mask=False,
        )  # fmt: skip


def test_torch_export_records_torchvision_op_even_with_autograd_on():
    """With gradients enabled, CPU tensors take the training path (grid_sample); a graph being
    captured by torch.export must still record the operator the exporters translate."""
    layer = ModulatedDeformConv2d(4, 4).eval()
    args = (torch.randn(1, 4, 6, 6), torch.randn(1, 18, 6, 6), torch.rand(1, 9, 6, 6))
    program = torch.export.export(layer, args, strict=False)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "torchvision.deform_conv2d.default" in targets
    assert not any("grid_sampler" in t for t in targets)
