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
        "--weights", str(weights), "--device", "cpu", str(image),
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
