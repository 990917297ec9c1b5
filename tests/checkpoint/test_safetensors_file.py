"""Our safetensors reader and writer: round trip, agreement with the reference implementation,
and hostile files refused before any data is used."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import safetensors.torch
import torch

from dyhead_serve.checkpoint import CheckpointError, CheckpointFormat, checkpoint_format, read_state_dict
from dyhead_serve.checkpoint.safetensors_file import (
    SafetensorsError,
    is_safetensors,
    read_safetensors,
    tensor_locations,
    write_safetensors,
)

TENSORS = {
    "conv.weight": torch.randn(4, 3, 3, 3),
    "norm.running_var": torch.rand(4, dtype=torch.float64),
    "half": torch.randn(5).half(),
    "bf": torch.randn(2, 2).bfloat16(),
    "index": torch.arange(12).view(3, 4),
    "flag": torch.tensor([True, False]),
    "scalar": torch.tensor(1.5),
    "empty": torch.zeros(0, 3),
}


def test_round_trip_keeps_order_dtype_shape_and_values(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    locations = write_safetensors(TENSORS, path, {"producer": "test"})
    assert is_safetensors(path) and checkpoint_format(path) is CheckpointFormat.SAFETENSORS
    back = read_safetensors(path)
    assert list(back) == list(TENSORS) == list(locations)
    for name, tensor in TENSORS.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    assert tensor_locations(path)[1] == {"producer": "test"}
    first = path.read_bytes()
    write_safetensors(TENSORS, path, {"producer": "test"})
    assert path.read_bytes() == first  # deterministic: same tensors, same bytes (and checksum)


def test_agrees_with_the_reference_implementation(tmp_path: Path) -> None:
    ours = tmp_path / "ours.safetensors"
    write_safetensors(TENSORS, ours)
    theirs = safetensors.torch.load_file(str(ours))
    assert all(torch.equal(theirs[k], v) for k, v in TENSORS.items())
    reference = tmp_path / "reference.safetensors"
    safetensors.torch.save_file(dict(TENSORS), str(reference), metadata={"format": "pt"})
    back = read_safetensors(reference)
    assert all(torch.equal(back[k], v) for k, v in TENSORS.items())


def test_a_checkpoint_in_safetensors_format_loads_by_its_contents(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"  # named .pth, read as what it is
    write_safetensors({"a": torch.ones(2)}, path)
    assert torch.equal(read_state_dict(path)["a"], torch.ones(2))


def _file(tmp_path: Path, header: object, data: bytes = b"", raw_header: bytes | None = None) -> Path:
    encoded = raw_header if raw_header is not None else json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        ({"a": ENTRY}, b"\0" * 4, "outside the file"),
        ({"a": {**ENTRY, "dtype": "F8_E4M3X"}}, b"\0" * 8, "unsupported dtype"),
        ({"a": {**ENTRY, "shape": [3]}}, b"\0" * 8, "does not fill"),
        ({"a": {**ENTRY, "shape": [True, 2]}}, b"\0" * 8, "invalid shape"),
        ({"a": {**ENTRY, "shape": [-2, -1]}}, b"\0" * 8, "invalid shape"),
        ({"a": {**ENTRY, "data_offsets": [8, 0]}}, b"\0" * 8, "outside the file"),
        ({"a": {**ENTRY, "extra": 1}}, b"\0" * 8, "exactly dtype, shape and data_offsets"),
        ({"a": ENTRY, "b": {**ENTRY, "data_offsets": [4, 12]}}, b"\0" * 12, "overlap"),
        ({"__metadata__": {"k": 1}}, b"", "__metadata__"),
    ],
)
def test_hostile_headers_are_refused(tmp_path: Path, header: object, data: bytes, message: str) -> None:
    path = _file(tmp_path, header, data)
    with pytest.raises(SafetensorsError, match=message):
        read_safetensors(path)
    with pytest.raises(CheckpointError, match=message):
        read_state_dict(path)


def test_header_length_beyond_the_file_and_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    assert not is_safetensors(path)  # then read as a pickle, which refuses it
    with pytest.raises(SafetensorsError, match="does not fit"):
        tensor_locations(path)
    with pytest.raises(SafetensorsError, match="not JSON"):
        read_safetensors(_file(tmp_path, None, raw_header=b"{\xff\xfe"))
    with pytest.raises(SafetensorsError, match="not a JSON object"):
        read_safetensors(_file(tmp_path, [1, 2]))
    deep = _file(tmp_path, None, raw_header=b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}")
    with pytest.raises(SafetensorsError, match="nests too deeply"):
        read_safetensors(deep)
    with pytest.raises(CheckpointError, match="nests too deeply"):
        read_state_dict(deep)
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x02\0\0")
    with pytest.raises(SafetensorsError, match="too short"):
        tensor_locations(short)
