"""The safetensors file format: tensors as raw little-endian bytes behind a JSON header.

Layout: an unsigned 64-bit little-endian header length ``n``, ``n`` bytes of UTF-8 JSON
(``{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__":
{str: str}}``, padded with spaces to a multiple of 8), then the data; offsets are relative to the
start of the data. Nothing in a file is executed, and every field is checked before a byte of
data is used, so a hostile file is refused with :class:`SafetensorsError`.

Because each tensor's bytes lie contiguous at a known offset, an ONNX graph can point its
initializers into the same file (ONNX external data): the embedded default model stores its
weights once for PyTorch and ONNX Runtime.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from dyhead_serve.errors import UserError

__all__ = [
    "SAFETENSORS_SUFFIX",
    "SafetensorsError",
    "TensorLocation",
    "is_safetensors",
    "read_safetensors",
    "tensor_locations",
    "write_safetensors",
]

SAFETENSORS_SUFFIX = ".safetensors"
_MAX_HEADER_BYTES = 100 * 2**20  # a header describes tensors; 100 MiB of JSON is no checkpoint
# torch indexes elements with signed 64-bit integers: the largest stride (the product of every
# dimension but the first, a zero-sized one counted as 1) must stay below 2**63 elements.
_MAX_ELEMENTS = 2**63 - 1
_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


class SafetensorsError(UserError, ValueError):
    """The file is not a valid safetensors file (the message says what is wrong)."""


@dataclass(frozen=True)
class TensorLocation:
    """Where one tensor's bytes are in the file: ``offset`` from the start of the file."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    length: int


def is_safetensors(path: str | os.PathLike[str]) -> bool:
    """Whether the file starts like a safetensors file (a header length, then ``{``)."""
    try:
        with Path(path).open("rb") as file:
            head = file.read(9)
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= struct.unpack("<Q", head[:8])[0] <= _MAX_HEADER_BYTES


def tensor_locations(path: str | os.PathLike[str]) -> tuple[dict[str, TensorLocation], dict[str, str]]:
    """Read and check the header: tensor name -> location (in file order), and the metadata.

    Raises:
        SafetensorsError: truncated file, malformed header, unknown dtype, a shape that does
            not match its byte range, or byte ranges that overlap or leave the file.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise SafetensorsError(f"{path}: too short for a safetensors file")
        (header_len,) = struct.unpack("<Q", prefix)
        if not 2 <= header_len <= min(_MAX_HEADER_BYTES, size - 8):
            raise SafetensorsError(f"{path}: header length {header_len} does not fit the file ({size} bytes)")
        raw = file.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsError(f"{path}: the header is not JSON ({exc})") from None
    except RecursionError:  # a header of deeply nested brackets: no header describes tensors so
        raise SafetensorsError(f"{path}: the header nests too deeply to be a safetensors header") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise SafetensorsError(f"{path}: the header is not a valid safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: the header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise SafetensorsError(f"{path}: __metadata__ must map strings to strings")
    data_start = 8 + header_len
    data_size = size - data_start
    locations: dict[str, TensorLocation] = {}
    ranges = []
    for name, entry in header.items():
        locations[name] = _location(path, name, entry, data_start, data_size)
        ranges.append((locations[name].offset, locations[name].offset + locations[name].length, name))
    ranges.sort()
    for (_, end, first), (begin, _, second) in itertools.pairwise(ranges):
        if begin < end:
            raise SafetensorsError(f"{path}: tensors {first!r} and {second!r} overlap")
    ordered = dict(sorted(locations.items(), key=lambda item: item[1].offset))
    return ordered, dict(metadata)


def _location(path: Path, name: str, entry: object, data_start: int, data_size: int) -> TensorLocation:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise SafetensorsError(f"{path}: tensor {name!r} needs exactly dtype, shape and data_offsets")
    dtype = _DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise SafetensorsError(f"{path}: tensor {name!r} has an unsupported dtype {entry['dtype']!r}")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape) or len(shape) > 16:
        raise SafetensorsError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(v) for v in offsets):
        raise SafetensorsError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
    if math.prod(max(d, 1) for d in shape) > _MAX_ELEMENTS:
        raise SafetensorsError(f"{path}: tensor {name!r}: shape {shape} is too large for a tensor")
    begin, end = offsets
    if not begin <= end <= data_size:
        raise SafetensorsError(f"{path}: tensor {name!r} lies outside the file (bytes {begin}..{end})")
    itemsize = torch.empty((), dtype=dtype).element_size()
    if math.prod(shape) * itemsize != end - begin:
        raise SafetensorsError(f"{path}: tensor {name!r}: shape {shape} does not fill bytes {begin}..{end}")
    return TensorLocation(dtype, tuple(shape), data_start + begin, end - begin)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors of the file, on the CPU, in file order (see :func:`tensor_locations`)."""
    locations, _ = tensor_locations(path)
    tensors = {}
    with Path(path).open("rb") as file:
        for name, where in locations.items():
            file.seek(where.offset)
            data = bytearray(file.read(where.length))
            flat = (
                torch.frombuffer(data, dtype=where.dtype)
                if where.length
                else torch.empty(0, dtype=where.dtype)
            )
            try:
                tensors[name] = flat.reshape(where.shape)
            except (RuntimeError, TypeError, OverflowError) as exc:  # a shape torch cannot index
                shape = list(where.shape)
                raise SafetensorsError(f"{path}: tensor {name!r}: shape {shape} ({exc})") from None
    return tensors


def write_safetensors(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
) -> dict[str, TensorLocation]:
    """Write ``tensors`` (in their order, back to back: the format allows no holes) and return
    where each landed. The same tensors and metadata always give the same bytes.
    """
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name, tensor in tensors.items():
        if tensor.dtype not in _NAMES:
            raise SafetensorsError(f"tensor {name!r}: dtype {tensor.dtype} cannot be written")
        blob = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        blobs.append(blob)
        header[name] = {
            "dtype": _NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        offset += len(blob)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as file:
        file.write(struct.pack("<Q", len(encoded)))
        file.write(encoded)
        for blob in blobs:
            file.write(blob)
    tmp.replace(target)
    locations, _ = tensor_locations(target)
    return locations
