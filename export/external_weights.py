"""One copy of the weights for PyTorch and ONNX Runtime: ``model.safetensors`` beside
``model.onnx``, whose initializers point into it (ONNX external data).

The state dict is written as a safetensors file (raw bytes at known offsets, no pickle); every
initializer of the graph whose bytes equal one of its tensors becomes a reference to that byte
range. What the exporter computed itself (folded constants) stays inside ``model.onnx``. The
embedded default model is shipped this way, so its weights are stored once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from onnx import external_data_helper, numpy_helper

from dyhead_serve.checkpoint.safetensors_file import (
    TensorLocation,
    read_safetensors,
    tensor_locations,
    write_safetensors,
)
from dyhead_serve.export.errors import ExportError

__all__ = ["WEIGHTS_FILE", "SharedWeights", "check_external_data", "share_weights", "write_weights_file"]

WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class SharedWeights:
    """What :func:`share_weights` did: initializers and bytes now read from the weights file,
    and bytes still inside ``model.onnx``."""

    linked: int
    linked_bytes: int
    inline: int
    inline_bytes: int

    def describe(self) -> str:
        share = self.linked_bytes / max(self.linked_bytes + self.inline_bytes, 1)
        return (
            f"{self.linked} initializers ({self.linked_bytes / 2**20:.2f} MiB, {share:.1%} of the "
            f"weights) read from {WEIGHTS_FILE}; {self.inline} ({self.inline_bytes / 2**10:.1f} KiB) "
            "stay in model.onnx"
        )


def check_external_data(model: onnx.ModelProto, folder: str | Path) -> None:
    """Refuse a graph whose external data (initializers stored in other files) would be read from
    outside ``folder`` or from something that is not a regular file inside it: a ``model.onnx`` from
    elsewhere may name ``../../etc/passwd``. Reads only the graph's references (load it with
    ``load_external_data=False``).

    Raises:
        ExportError: naming the tensor and the file it points to.
    """
    root = Path(folder).resolve()
    for tensor in _graph_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        target = (root / location).resolve()
        if not target.is_relative_to(root):
            raise ExportError(
                f"{root}/model.onnx: tensor {tensor.name!r} reads its data from {location!r}, outside "
                f"{root}; an exported folder keeps its external data beside model.onnx"
            )
        if not target.is_file():
            raise ExportError(
                f"{root}/model.onnx: tensor {tensor.name!r} reads its data from {location!r}, which is "
                f"not a file in {root} (copy the whole exported folder, {WEIGHTS_FILE} included)"
            )


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of ``graph``: its initializers and the tensor attributes of its nodes, in
    subgraphs too."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _graph_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graph_tensors(subgraph)


def _fingerprint(dtype: str, shape: tuple[int, ...], data: bytes) -> tuple[str, tuple[int, ...], str]:
    return dtype, shape, hashlib.sha256(data).hexdigest()


def write_weights_file(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write the state dict as a safetensors file, unless the file already holds exactly these
    tensors (a re-export from the file itself then leaves its bytes, and checksum, as they are)."""
    state = {name: tensor.detach().cpu() for name, tensor in state.items()}
    if path.is_file():
        try:
            stored = read_safetensors(path)
        except (ValueError, OSError):
            stored = {}
        same = list(stored) == list(state) and all(
            stored[k].dtype == v.dtype and torch.equal(stored[k], v) for k, v in state.items()
        )
        if same:
            return
    write_safetensors(state, path, {"format": "pt", "producer": "dyhead-serve"})


def share_weights(onnx_path: str | Path, state: Mapping[str, torch.Tensor]) -> SharedWeights:
    """Write ``state`` to ``model.safetensors`` beside ``onnx_path`` and make the graph's
    initializers that equal one of its tensors (same dtype, shape and bytes) read from it.

    ``model.onnx`` is rewritten in place; ONNX Runtime and ``onnx.load`` find the weights file
    by its path relative to the graph, so the two files travel together.
    """
    onnx_path = Path(onnx_path)
    weights_path = onnx_path.with_name(WEIGHTS_FILE)
    state = {name: tensor.detach().cpu() for name, tensor in state.items()}
    write_weights_file(state, weights_path)
    locations, _ = tensor_locations(weights_path)
    by_content: dict[tuple[str, tuple[int, ...], str], TensorLocation] = {}
    for name, location in locations.items():
        tensor = state[name]
        if tensor.dtype == torch.bfloat16:
            continue  # no numpy dtype: such an initializer stays inside model.onnx
        array = tensor.contiguous().numpy()
        by_content[_fingerprint(array.dtype.name, tuple(array.shape), array.tobytes())] = location

    model = onnx.load(str(onnx_path))
    linked = linked_bytes = inline = inline_bytes = 0
    for initializer in model.graph.initializer:
        array = numpy_helper.to_array(initializer)
        data = array.tobytes()
        where = by_content.get(_fingerprint(array.dtype.name, tuple(array.shape), data))
        if where is None:
            inline += 1
            inline_bytes += len(data)
            continue
        # set_external_data needs the bytes as raw_data; they are dropped once it is set.
        initializer.CopyFrom(numpy_helper.from_array(array, initializer.name))
        external_data_helper.set_external_data(
            initializer, WEIGHTS_FILE, offset=where.offset, length=where.length
        )
        initializer.ClearField("raw_data")
        linked += 1
        linked_bytes += len(data)
    onnx.save(model, str(onnx_path))
    return SharedWeights(linked, linked_bytes, inline, inline_bytes)
