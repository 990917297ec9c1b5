"""A mixed-precision ONNX graph from a float32 export: float16 where it is safe, float32 where
float16 loses accuracy.

The graph's inputs and outputs stay float32 (Cast nodes inside), so preprocessing, decoders,
backends and the server are unchanged. Each node runs in one precision:

- the heavy compute (``Conv``, ``Gemm``, ``MatMul``, ``DeformConv`` and our plugin's node) in
  float16, with the weights stored in float16;
- the ops of :data:`KEEP_FLOAT32` in float32 (what they are and why, with the measurements that
  decided it: ``benchmarks/fp16_sensitivity.py`` and README, "Float16 ONNX");
- every other node (element-wise, data movement, pooling, activations) in the precision of its
  inputs: float16 only when none of its float inputs is a float32 activation, so an island of
  float32 (a normalisation and the affine after it, box decoding and the NMS inputs) stays
  float32 until the next heavy op;
- a node whose float constant inputs do not fit float16 (``|x| > 65504``, e.g. a batch norm's
  running variance) stays float32;
- nodes whose float inputs are not derived from the image (shape arithmetic, anchors from
  the feature maps' sizes, image sizes) are left as they are: float16 holds integers exactly only
  up to 2048.

Cast nodes are inserted where a value crosses from one precision to the other; a constant used
in both precisions is stored twice. Weights read from ``model.safetensors`` (external weights)
that become float16 are stored inside ``model.onnx``; those that stay float32 keep reading the
file. Subgraphs (``If``) run in float32.
"""

from __future__ import annotations

import collections
import logging
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dyhead_serve.plugins.schema import MDCN_SCHEMA
from dyhead_serve.runtime.artifact import ModelArtifact

from .external_weights import WEIGHTS_FILE

__all__ = [
    "COMPUTE_OPS",
    "KEEP_FLOAT32",
    "Float16Report",
    "convert_folder_to_float16",
    "convert_to_float16",
    "value_types",
    "write_float16_onnx",
]

logger = logging.getLogger(__name__)


FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
FLOAT16_MAX = 65504.0

# Ops that carry the arithmetic: float16 whenever an image-derived activation reaches them.
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "DeformConv", MDCN_SCHEMA.name})

# Ops kept in float32 (the numbers: benchmarks/fp16_sensitivity.py, README "Float16 ONNX"):
# - normalisations (InstanceNormalization is how GroupNorm exports; LayerNormalization, and
#   ReduceMean, the mean of a decomposed norm and of DyHead's scale attention): a variance
#   computed in float16 squares its centred inputs, and inputs measured up to 85 (the embedded
#   model) square to 7.2e3 each: their sum over a feature map overflows float16's 65504;
# - Softmax (Swin's attention) and Exp / Log (box decoding, the RPN's proposals): exp overflows
#   float16 above 11.09;
# - TopK, NonMaxSuppression and RoiAlign: the NMS inputs and the proposal boxes, coordinates in
#   input pixels, for which float16's spacing is 0.5 to 1 px between 1024 and 2048 px.
# Sigmoid (its output is in [0, 1]: 5e-4 spacing), Resize, BatchNormalization (unless its
# constants exceed float16), GlobalAveragePool, Clip and Div follow their inputs: keeping each of
# them in float32 changed no output beyond float16 storage rounding (benchmarks/fp16_sensitivity.py).
KEEP_FLOAT32 = frozenset(
    {
        "InstanceNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "ReduceMean",
        "Softmax",
        "Exp",
        "Log",
        "TopK",
        "NonMaxSuppression",
        "RoiAlign",
    }
)

# Control flow runs its subgraphs as exported (float32); Range has no float16 type.
_FLOAT32_ONLY = frozenset({"If", "Loop", "Scan", "Range"})

# Inputs that keep their type whatever the node's precision (Resize: roi and scales).
_FIXED_INPUTS: dict[str, frozenset[int]] = {"Resize": frozenset({1, 2})}


@dataclass
class Float16Report:
    """What :func:`convert_to_float16` did.

    ``weights_*``: elements of float constants (initializers and ``Constant`` nodes) now float16
    and still float32; ``nodes``: per op type, how many nodes run in float16 / float32 among the
    nodes that touch image-derived activations; ``casts``: Cast nodes inserted.
    """

    weights_fp16: int = 0
    weights_fp32: int = 0
    nodes: dict[str, list[int]] = field(default_factory=dict)  # op -> [fp16, fp32]
    casts: int = 0
    kept_ops: tuple[str, ...] = ()
    unrepresentable: list[str] = field(default_factory=list)  # nodes kept float32 for their constants

    @property
    def weights_fraction(self) -> float:
        """Share of the float constants' elements stored in float16."""
        return self.weights_fp16 / max(self.weights_fp16 + self.weights_fp32, 1)

    def format(self) -> str:
        fp16_nodes = sum(v[0] for v in self.nodes.values())
        fp32_nodes = {op: v[1] for op, v in sorted(self.nodes.items()) if v[1]}
        lines = [
            f"  weights in float16: {self.weights_fraction:.1%} of {self.weights_fp16 + self.weights_fp32:,} "
            f"values; {fp16_nodes} nodes in float16, {sum(fp32_nodes.values())} in float32, "
            f"{self.casts} casts",
            "  float32 nodes: " + (", ".join(f"{op} {n}" for op, n in fp32_nodes.items()) or "none"),
        ]
        if self.unrepresentable:
            lines.append(
                f"  kept float32 for constants beyond float16's range: {len(self.unrepresentable)} "
                f"({', '.join(self.unrepresentable[:3])}{', ...' if len(self.unrepresentable) > 3 else ''})"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        """The summary recorded in model.json."""
        return {
            "weights_fp16_fraction": round(self.weights_fraction, 4),
            "float32_ops": sorted(op for op, v in self.nodes.items() if v[1]),
            "casts": self.casts,
        }


def _is_compute(node: onnx.NodeProto) -> bool:
    if node.op_type == MDCN_SCHEMA.name:
        return node.domain == MDCN_SCHEMA.namespace
    return node.domain in ("", "ai.onnx") and node.op_type in COMPUTE_OPS


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs read from the enclosing scope."""
    names: set[str] = set()
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
        for graph in graphs:
            local = {i.name for i in graph.input} | {i.name for i in graph.initializer}
            for inner in graph.node:
                names |= {x for x in inner.input if x and x not in local}
                names |= _subgraph_inputs(inner) - local
                local |= set(inner.output)
    return names


def _rename_in_subgraphs(node: onnx.NodeProto, old: str, new: str) -> None:
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
        for graph in graphs:
            for inner in graph.node:
                for i, name in enumerate(inner.input):
                    if name == old:
                        inner.input[i] = new
                _rename_in_subgraphs(inner, old, new)


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value of the main graph: ONNX type inference, then the first input's
    type for nodes it cannot type (our plugin's node)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = next((a for a in node.attribute if a.name == "value"), None)
            types[node.output[0]] = value.t.data_type if value is not None else TensorProto.UNDEFINED
        for out in node.output:
            if not types.get(out):
                first = next((types.get(x, 0) for x in node.input if x), 0)
                types[out] = first
    return types


def _fits_float16(array: np.ndarray) -> bool:
    return bool(array.size == 0 or (np.isfinite(array).all() and np.abs(array).max() <= FLOAT16_MAX))


class _Constants:
    """Float32 initializers and ``Constant`` nodes of the main graph, read on demand."""

    def __init__(self, model: onnx.ModelProto, base_dir: Path | None) -> None:
        self.base_dir = str(base_dir) if base_dir is not None else ""
        self.initializers = {i.name: i for i in model.graph.initializer if i.data_type == FLOAT}
        self.nodes: dict[str, onnx.NodeProto] = {}
        for node in model.graph.node:
            if node.op_type == "Constant":
                value = next((a for a in node.attribute if a.name == "value"), None)
                if value is not None and value.t.data_type == FLOAT:
                    self.nodes[node.output[0]] = node
        self._arrays: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.initializers or name in self.nodes

    def size(self, name: str) -> int:
        if name in self.initializers:
            return int(np.prod(self.initializers[name].dims))
        return int(self.array(name).size)

    def array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            if name in self.initializers:
                self._arrays[name] = numpy_helper.to_array(self.initializers[name], self.base_dir)
            else:
                value = next(a for a in self.nodes[name].attribute if a.name == "value")
                self._arrays[name] = numpy_helper.to_array(value.t)
        return self._arrays[name]


def _float_inputs(node: onnx.NodeProto, types: dict[str, int]) -> Iterator[tuple[int, str]]:
    fixed = _FIXED_INPUTS.get(node.op_type, frozenset())
    for index, name in enumerate(node.input):
        if name and index not in fixed and types.get(name) == FLOAT:
            yield index, name


def _decide(
    model: onnx.ModelProto,
    types: dict[str, int],
    constants: _Constants,
    keep: frozenset[str],
    report: Float16Report,
) -> tuple[set[int], set[str]]:
    """The nodes (by index) that run in float16, and the image-derived float values."""
    graph = model.graph
    activations = {i.name for i in graph.input if i.type.tensor_type.elem_type == FLOAT}
    low_values: set[str] = set()
    low_nodes: set[int] = set()
    for index, node in enumerate(graph.node):
        inputs = list(_float_inputs(node, types))
        implicit = [x for x in _subgraph_inputs(node) if types.get(x) == FLOAT]
        touches = [x for _, x in inputs if x in activations] + [x for x in implicit if x in activations]
        if not touches:
            continue  # shape arithmetic, anchors, constants: as exported
        float_outputs = [x for x in node.output if x and types.get(x) == FLOAT]
        activations.update(float_outputs)
        counts = report.nodes.setdefault(node.op_type, [0, 0]) if float_outputs else [0, 0]
        low = node.op_type not in keep and node.op_type not in _FLOAT32_ONLY and not implicit
        if low and not _is_compute(node):
            # a follower: float16 only when every float input is float16 or a constant
            low = all(x in low_values or x in constants for _, x in inputs)
        if low:
            bad = [x for _, x in inputs if x in constants and not _fits_float16(constants.array(x))]
            if bad:
                low = False
                report.unrepresentable.append(node.name or node.op_type)
        counts[0 if low else 1] += 1
        if low:
            low_nodes.add(index)
            low_values.update(float_outputs)
    return low_nodes, low_values


def convert_to_float16(
    model: onnx.ModelProto,
    *,
    keep: Iterable[str] = KEEP_FLOAT32,
    base_dir: str | Path | None = None,
) -> tuple[onnx.ModelProto, Float16Report]:
    """The mixed-precision twin of a float32 graph (see the module docstring).

    Args:
        model: a float32 graph (not changed).
        keep: op types kept in float32 (default :data:`KEEP_FLOAT32`).
        base_dir: the folder external data is read from (the graph's folder).

    Returns:
        the converted graph, whose inputs and outputs keep their float32 types, and a report.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    report = Float16Report(kept_ops=tuple(sorted(keep)))
    types = value_types(model)
    constants = _Constants(model, Path(base_dir) if base_dir is not None else None)
    low_nodes, low_values = _decide(model, types, constants, frozenset(keep), report)

    # What each constant is needed as.
    wanted: dict[str, set[int]] = collections.defaultdict(set)
    for index, node in enumerate(graph.node):
        data_inputs = {i for i, _ in _float_inputs(node, types)}
        for i, name in enumerate(node.input):
            if name in constants:  # an input of fixed type (Resize's scales) stays float32
                wanted[name].add(FLOAT16 if index in low_nodes and i in data_inputs else FLOAT)
        for name in _subgraph_inputs(node):
            if name in constants:
                wanted[name].add(FLOAT)
    for output in graph.output:
        if output.name in constants:
            wanted[output.name].add(FLOAT)

    # Graph outputs produced in float16 are renamed; a Cast writes the float32 output.
    renamed: dict[str, str] = {}
    cast_names: dict[tuple[str, int], str] = {}
    for output in graph.output:
        if output.name in low_values:
            renamed[output.name] = f"{output.name}__fp16"
            cast_names[(renamed[output.name], FLOAT)] = output.name
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
        for i, name in enumerate(node.output):
            if name in renamed:
                node.output[i] = renamed[name]
        for old, new in renamed.items():
            _rename_in_subgraphs(node, old, new)
    low_values = {renamed.get(v, v) for v in low_values}
    types.update({new: types[old] for old, new in renamed.items()})

    # Constants: converted in place when only float16 nodes read them, else a float16 copy.
    constant_fp16: dict[str, str] = {}
    new_initializers: list[onnx.TensorProto] = []
    for name, wants in wanted.items():
        if FLOAT16 not in wants:
            report.weights_fp32 += constants.size(name)
            continue
        array = constants.array(name)
        half = numpy_helper.from_array(array.astype(np.float16))
        target = name if wants == {FLOAT16} else f"{name}__fp16"
        constant_fp16[name] = target
        report.weights_fp16 += array.size
        if target != name:
            report.weights_fp32 += array.size
        if name in constants.initializers:
            half.name = target
            if target == name:
                constants.initializers[name].CopyFrom(half)
            else:
                new_initializers.append(half)
        elif target == name:
            value = next(a for a in constants.nodes[name].attribute if a.name == "value")
            value.t.CopyFrom(half)
        else:
            new_initializers.append(numpy_helper.from_array(array.astype(np.float16), target))
    for name in constants.initializers:
        if name not in wanted:
            report.weights_fp32 += constants.size(name)
    graph.initializer.extend(new_initializers)

    # Rewire the inputs of every node; casts right before their first reader.
    new_nodes: list[onnx.NodeProto] = []

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in cast_names:
            suffix = "fp16" if to == FLOAT16 else "fp32"
            cast_names[key] = f"{name}__{suffix}"
        target = cast_names[key]
        if key not in emitted:
            emitted.add(key)
            new_nodes.append(helper.make_node("Cast", [name], [target], to=to, name=f"{target}/Cast"))
            report.casts += 1
        return target

    emitted: set[tuple[str, int]] = set()

    def current(name: str) -> int:
        if name in constant_fp16 and constant_fp16[name] == name:
            return FLOAT16
        return FLOAT16 if name in low_values else FLOAT

    for index, node in enumerate(graph.node):
        want = FLOAT16 if index in low_nodes else FLOAT
        for i, name in _float_inputs(node, types):
            name = renamed.get(name, name)
            if want == FLOAT16 and name in constant_fp16:
                node.input[i] = constant_fp16[name]
            elif current(name) != want:
                node.input[i] = cast(name, want)
        for name in _subgraph_inputs(node):
            if current(name) == FLOAT16:
                _rename_in_subgraphs(node, name, cast(name, FLOAT))
        if index in low_nodes and node.op_type == "Cast":
            to = next(a for a in node.attribute if a.name == "to")
            if to.i == FLOAT:
                to.i = FLOAT16
        new_nodes.append(node)
        for out in node.output:
            if out in renamed.values() and index in low_nodes:
                original = next(k for k, v in renamed.items() if v == out)
                emitted.add((out, FLOAT))
                new_nodes.append(
                    helper.make_node("Cast", [out], [original], to=FLOAT, name=f"{original}/Cast")
                )
                report.casts += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]
    return model, report


def write_float16_onnx(onnx_path: str | Path, *, keep: Iterable[str] = KEEP_FLOAT32) -> Float16Report:
    """Convert ``onnx_path`` (a float32 export) to float16 in place.

    Initializers that stay float32 and read ``model.safetensors`` keep reading it; the float16
    ones are stored inside ``model.onnx``.
    """
    path = Path(onnx_path)
    model = onnx.load(str(path), load_external_data=False)
    converted, report = convert_to_float16(model, keep=keep, base_dir=path.parent)
    onnx.save(converted, str(path))
    return report


def convert_folder_to_float16(
    source: str | Path, out: str | Path, *, keep: Iterable[str] = KEEP_FLOAT32
) -> Float16Report:
    """Write the float16 twin of an exported float32 folder (``model.onnx`` + ``model.json``,
    and ``model.safetensors`` when the graph reads it) into ``out``; model.json records
    ``precision: fp16``. For a folder exported earlier (``dyhead-export tensorrt --onnx DIR``);
    verify the result against PyTorch as an export does (:func:`.verify.compare_backends` with
    :func:`.verify.tolerances_for` ``("fp16")``).

    Raises:
        ValueError: ``source`` is not a float32 export, or ``out`` is ``source``.
    """
    source, out = Path(source), Path(out)
    if source.resolve() == out.resolve():
        raise ValueError(f"{out}: write the float16 twin to another folder than {source}")
    artifact = ModelArtifact.load(source / "model.json")
    if artifact.precision != "fp32":
        raise ValueError(f"{source}: already {artifact.precision}; convert a float32 export")
    out.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(source / "model.onnx"), load_external_data=False)
    converted, report = convert_to_float16(model, keep=keep, base_dir=source)
    external = {
        entry.value
        for tensor in converted.graph.initializer
        if tensor.data_location == TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    for name in external:
        if name != WEIGHTS_FILE:
            raise ValueError(f"{source}/model.onnx reads {name}; only {WEIGHTS_FILE} is expected")
        shutil.copyfile(source / name, out / name)
    onnx.save(converted, str(out / "model.onnx"))
    artifact.provenance = {**artifact.provenance, "precision": "fp16", "float16": report.to_dict()}
    artifact.save(out / "model.json")
    return report
