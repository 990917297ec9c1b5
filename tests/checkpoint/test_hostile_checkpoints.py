"""Hostile checkpoints (issue 23): weights that are not finite, files whose pickle or zip would
build far more than the file holds, safetensors headers that overflow. Each is refused with a
one-line error that names the file, and never reaches a kernel, a traceback or a signal."""

from __future__ import annotations

import json
import pickle
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dyhead_serve.checkpoint import CheckpointError, SafetensorsError, read_state_dict
from dyhead_serve.checkpoint.model_weights import initialize_from_weights
from dyhead_serve.checkpoint.safetensors_file import read_safetensors, write_safetensors

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "dyhead_serve" / "zoo_files" / "default" / "config.yaml"
DEFAULT_WEIGHTS = DEFAULT_CONFIG.with_name("model.safetensors")
OFFSET_BIAS = "backbone.dyhead_tower.0.offset.bias"  # a DyHead offset: deform_conv2d reads it


def _predict_default_model(weights: Path, image: Path) -> subprocess.CompletedProcess[str]:
    """``predict`` with the shipped default config and ``weights``, in a child process (a crash in
    a kernel is a signal there, not a dead test run)."""
    command = [
        sys.executable, "-m", "dyhead_serve.cli", "-q", "predict", "--config", str(DEFAULT_CONFIG),
        "--weights", str(weights), "--device", "cpu", "--backend", "torch", str(image),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("image") / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(path)
    return path


# --------------------------------------------------------------------------------------------
# Item 5: weights that are not finite


def _with_non_finite(value: float) -> dict[str, torch.Tensor]:
    state = {"conv.weight": torch.ones(2, 3), "conv.bias": torch.zeros(2), "index": torch.arange(3)}
    state["conv.bias"][1] = value
    return state


def _save(state: dict[str, torch.Tensor], path: Path, layout: str) -> Path:
    if layout == "pth":
        torch.save({"model": state}, path)
    elif layout == "legacy-pth":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    elif layout == "mmdet":  # numpy values beside the weights: read by our allowlisted unpickler
        torch.save({"state_dict": state, "meta": {"seed": np.int64(0), "epoch": 12}}, path)
    elif layout == "pkl":  # Detectron2 model zoo: numpy arrays in a plain pickle
        with path.open("wb") as file:
            arrays = {name: tensor.numpy() for name, tensor in state.items()}
            pickle.dump({"model": arrays, "__author__": "x"}, file, protocol=2)
    elif layout == "safetensors":
        write_safetensors(state, path)
    return path


LAYOUTS = {"pth": ".pth", "legacy-pth": ".pth", "mmdet": ".pth", "pkl": ".pkl", "safetensors": ".safetensors"}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_in_every_format(tmp_path: Path, layout: str, value: float) -> None:
    path = _save(_with_non_finite(value), tmp_path / f"w{LAYOUTS[layout]}", layout)
    message = rf"checkpoint {path}: tensor 'conv\.bias' holds 1 NaN or infinite"
    with pytest.raises(CheckpointError, match=message):
        read_state_dict(path)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_non_finite_weights_are_refused_in_every_dtype(tmp_path: Path, dtype: torch.dtype) -> None:
    path = tmp_path / "w.pth"
    torch.save({"w": torch.tensor([1.0, float("nan")]).to(dtype)}, path)
    with pytest.raises(CheckpointError, match="tensor 'w' holds 1 NaN or infinite value"):
        read_state_dict(path)


def test_finite_weights_and_integer_tensors_still_load(tmp_path: Path) -> None:
    path = _save(_with_non_finite(0.5), tmp_path / "w.pth", "pth")
    assert read_state_dict(path)["conv.bias"].tolist() == [0.0, 0.5]


def test_model_weights_initialisation_refuses_non_finite_weights(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    before = model.weight.detach().clone()
    path = tmp_path / "init.pth"
    torch.save({"weight": torch.full((2, 3), float("nan")), "bias": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="tensor 'weight' holds 6 NaN"):
        initialize_from_weights(model, str(path))
    assert torch.equal(model.weight, before)


def test_nan_in_a_dyhead_offset_is_refused_before_deform_conv(tmp_path: Path, image: Path) -> None:
    """Before the fix: ``predict`` died of a segmentation fault (exit 139) in torchvision's
    ``deform_conv2d``."""
    state = read_safetensors(DEFAULT_WEIGHTS)
    state[OFFSET_BIAS][0] = float("nan")
    weights = tmp_path / "nan.safetensors"
    write_safetensors(state, weights)
    result = _predict_default_model(weights, image)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"error: checkpoint {weights}: tensor '{OFFSET_BIAS}' holds 1 NaN or infinite value (of 27); "
        "the weights are broken (a diverged training run?), refusing them"
    ]
    assert result.stdout == ""


# --------------------------------------------------------------------------------------------
# Item 7: safetensors headers that overflow


def _safetensors(path: Path, header: bytes, data: bytes = b"") -> Path:
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def _entry(shape: list[int], offsets: tuple[int, int] = (0, 0)) -> bytes:
    return json.dumps({"a": {"dtype": "F32", "shape": shape, "data_offsets": list(offsets)}}).encode()


HOSTILE_HEADERS = {
    "huge-dimension": (_entry([0, 2**70]), b"", "shape \\[0, 1180591620717411303424\\] is too large"),
    "stride-overflow": (_entry([0, 2**63 - 1, 2]), b"", "shape \\[0, 9223372036854775807, 2\\] is too large"),
    "5000-digits": (
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,' + b"9" * 5000 + b"]}}",
        b"\0" * 4,
        "not a valid safetensors header .*5000 digits",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_HEADERS))
def test_overflowing_safetensors_headers_are_refused(tmp_path: Path, case: str) -> None:
    header, data, why = HOSTILE_HEADERS[case]
    path = _safetensors(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(SafetensorsError, match=rf"^{path}: .*{why}"):
        read_safetensors(path)
    with pytest.raises(CheckpointError, match=rf"^checkpoint {path}: (?!{path}).*{why}"):  # named once
        read_state_dict(path)


@pytest.mark.parametrize("case", sorted(HOSTILE_HEADERS))
def test_predict_with_an_overflowing_header_exits_2(tmp_path: Path, image: Path, case: str) -> None:
    header, data, why = HOSTILE_HEADERS[case]
    path = _safetensors(tmp_path / "bad.safetensors", header, data)
    result = _predict_default_model(path, image)
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: checkpoint {path}: ") and re.search(why, line)
    assert "Traceback" not in result.stderr


def test_resuming_from_a_diverged_training_checkpoint_is_refused(tmp_path: Path) -> None:
    from dyhead_serve.training.checkpointing import TrainingCheckpointer

    checkpointer = TrainingCheckpointer(tmp_path)
    state = {"weight": torch.tensor([1.0, float("nan")])}
    contents = {"model": state, "optimizer": {}, "scheduler": {}, "iteration": 9}
    path = checkpointer.save("model_0000009.pth", contents)
    with pytest.raises(CheckpointError, match=rf"checkpoint {path}: tensor 'weight' holds 1 NaN"):
        checkpointer.load_last()


# --------------------------------------------------------------------------------------------
# Item 6: a checkpoint may not build much more than its file holds

_MEASURE = """
import resource, sys
from dyhead_serve.checkpoint import CheckpointError, read_state_dict
try:
    read_state_dict(sys.argv[1])
    print("read")
except CheckpointError as exc:
    print(exc)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def _read_in_child(path: Path) -> tuple[str, int]:
    """Read ``path`` in a child process: its message and its peak RSS in MiB."""
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-2000:]
    *message, peak = result.stdout.strip().splitlines()
    return "\n".join(message), int(peak)


@pytest.fixture(scope="module")
def baseline_rss(tmp_path_factory: pytest.TempPathFactory) -> int:
    """Peak RSS (MiB) of a child reading a small valid checkpoint: torch and the imports."""
    path = tmp_path_factory.mktemp("baseline") / "ok.pth"
    torch.save({"w": torch.ones(4)}, path)
    message, peak = _read_in_child(path)
    assert message == "read"
    return peak


class _Sized:
    """Pickles as ``factory(*args)``: how a hostile pickle asks for memory with a few bytes."""

    def __init__(self, factory: object, *args: object) -> None:
        self.factory, self.args = factory, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.factory, self.args


def _bytearray_pickle(path: Path) -> Path:
    path.write_bytes(pickle.dumps({"model": _Sized(bytearray, 3_000_000_000)}, protocol=2))
    return path


def test_a_69_byte_pickle_cannot_allocate_3_gb(tmp_path: Path, baseline_rss: int) -> None:
    """Before the fix: 3.6 GB of RSS, then "holds no tensors"."""
    path = _bytearray_pickle(tmp_path / "bomb.pkl")
    assert path.stat().st_size < 100
    message, peak = _read_in_child(path)
    assert message.startswith(
        f"checkpoint {path}: its pickle asks builtins.bytearray for 3000000000 elements"
    )
    assert peak < baseline_rss + 100, (peak, baseline_rss)


@pytest.mark.parametrize(
    ("factory", "args", "asks"),
    [
        (bytes, (3_000_000_000,), "builtins.bytes"),
        (np.ndarray, ((60_000, 60_000),), "numpy.ndarray"),
        (np.dtype, (("f8", (100_000, 100_000)),), "numpy.dtype"),
    ],
)
def test_other_constructors_sized_by_an_integer_are_refused(
    tmp_path: Path, factory: object, args: tuple[object, ...], asks: str
) -> None:
    path = tmp_path / "bomb.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": _Sized(factory, *args)}}, protocol=2))
    with pytest.raises(CheckpointError, match=f"its pickle asks {asks} for"):
        read_state_dict(path)


TINY_BOMBS = {
    # 9 bytes whose memo index makes the C unpickler allocate 2 GiB (16 bytes per index)
    "memo-index": (b"\x80\x02N" + b"r" + (2**27).to_bytes(4, "little") + b".", "expected a dict of tensors"),
    # 12 bytes whose bytearray Python's unpickler would zero-fill (3 GB) before reading it
    "bytearray8": (
        b"\x80\x05\x96" + (3_000_000_000).to_bytes(8, "little") + b".",
        "its pickle asks pickle.BYTEARRAY8 for 3000000000 elements",
    ),
}


@pytest.mark.parametrize("case", sorted(TINY_BOMBS))
def test_a_few_pickle_opcodes_cannot_allocate_gigabytes(tmp_path: Path, baseline_rss: int, case: str) -> None:
    data, why = TINY_BOMBS[case]
    path = tmp_path / "tiny.pkl"
    path.write_bytes(data)
    message, peak = _read_in_child(path)
    assert message.startswith(f"checkpoint {path}: {why}")
    assert peak < baseline_rss + 100, (peak, baseline_rss)


def test_torch_files_are_probed_too(tmp_path: Path) -> None:
    zipped, legacy = tmp_path / "zip.pth", tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(2), "x": _Sized(bytearray, 3_000_000_000)}, zipped)
    torch.save(
        {"w": torch.ones(2), "x": _Sized(bytearray, 3_000_000_000)},
        legacy,
        _use_new_zipfile_serialization=False,
    )
    for path in (zipped, legacy):
        with pytest.raises(CheckpointError, match=r"its pickle asks builtins\.bytearray for 3000000000"):
            read_state_dict(path)


def _rewrite_storage(source: Path, target: Path, inflated: int, compress: int) -> Path:
    """``source`` (a torch.save zip of one small tensor) with its storage entry replaced by
    ``inflated`` zero bytes, stored with ``compress``."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as rewritten:
        for info in original.infolist():
            if info.filename.endswith("/data/0"):
                entry = zipfile.ZipInfo(info.filename)
                entry.compress_type = compress
                with rewritten.open(entry, "w", force_zip64=True) as out:
                    block = bytes(2**20)
                    for _ in range(inflated // len(block)):
                        out.write(block)
            else:
                rewritten.writestr(info, original.read(info))
    return target


def test_a_zip_entry_that_inflates_to_512_mib_is_refused_before_reading(
    tmp_path: Path, baseline_rss: int
) -> None:
    """Before the fix: a 2 MB zip whose storage inflates to 2 GiB reached 2.8 GB of RSS."""
    source = tmp_path / "small.pth"
    torch.save({"w": torch.ones(4)}, source)
    path = _rewrite_storage(source, tmp_path / "bomb.pth", 512 * 2**20, zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 2 * 2**20
    message, peak = _read_in_child(path)
    assert message.startswith(f"checkpoint {path}: zip entry 'small/data/0' inflates from ")
    assert message.endswith(f"to {512 * 2**20} bytes; refusing it")
    assert peak < baseline_rss + 100, (peak, baseline_rss)


def test_a_storage_entry_larger_than_its_tensors_declare_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "small.pth"
    torch.save({"w": torch.ones(4)}, source)
    path = _rewrite_storage(source, tmp_path / "big.pth", 4 * 2**20, zipfile.ZIP_STORED)
    message = f"storage entry 'small/data/0' inflates to {4 * 2**20} bytes, but its tensors declare 16"
    with pytest.raises(CheckpointError, match=message):
        read_state_dict(path)


def test_legacy_storages_may_not_declare_more_than_the_file(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(4)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    # the storage's element count in its persistent id: BININT1 4 -> BININT 2**28
    patched = data.replace(
        b"X\x03\x00\x00\x00cpuq\x06K\x04", b"X\x03\x00\x00\x00cpuq\x06J" + (2**28).to_bytes(4, "little")
    )
    assert patched != data
    path.write_bytes(patched)
    with pytest.raises(
        CheckpointError, match="declares 1073741824 bytes of tensor storage, more than the file"
    ):
        read_state_dict(path)
