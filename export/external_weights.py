"""One copy of the weights for PyTorch and ONNX Runtime: ``model.safetensors`` beside
``model.onnx``, whose initializers point into it (ONNX external data).

The state dict is written as a safetensors file (raw bytes at known offsets, no pickle); every
initializer of the graph whose bytes equal one of its tensors becomes a reference to that byte
range. What the exporter computed itself (folded constants) stays inside ``model.onnx``. The
embedded default model is shipped this way, so its weights are stored once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
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

__all__ = ["WEIGHTS_FILE", "SharedWeights", "share_weights", "write_weights_file"]

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
