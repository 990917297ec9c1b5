"""Tests of dyhead_serve.checkpoint: safe reading of torch.save files and pickles, whatever their
suffix, and the load report."""

from __future__ import annotations

import logging
import os
import pickle
import shlex
import struct
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dyhead_serve.checkpoint import (
    CheckpointError,
    CheckpointFormat,
    CheckpointMismatchError,
    LoadReport,
    ShapeMismatch,
    checkpoint_format,
    load_state_dict,
    read_state_dict,
)

LOGGER = "dyhead_serve.checkpoint"


class TinyNet(nn.Module):
    """Two layers and an integer buffer, like Swin's relative_position_index."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.head = nn.Linear(4, num_classes)
        self.register_buffer("relative_position_index", torch.arange(6).view(2, 3))


def _other_values(seed: int) -> dict[str, torch.Tensor]:
    """A TinyNet state dict whose every tensor differs from a fresh TinyNet's."""
    torch.manual_seed(seed)
    state = {name: tensor.clone() for name, tensor in TinyNet().state_dict().items()}
    state["relative_position_index"] = torch.arange(6).view(2, 3).flip(0) * 10
    return state


def _assert_model_equals(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    actual = model.state_dict()
    assert list(actual) == list(expected)
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor.to(actual[name].dtype)), name


class CustomThing:
    """Any class outside the allowlists; pickled by reference to this module."""


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


# ---------------------------------------------------------------------------------- .pth


def test_pth_bare_state_dict_round_trip(tmp_path: Path) -> None:
    expected = _other_values(seed=1)
    path = tmp_path / "bare.pth"
    torch.save(expected, path)

    state = read_state_dict(path)
    assert list(state) == list(expected)
    model = TinyNet()
    report = load_state_dict(model, path)
    assert report.ok
    _assert_model_equals(model, expected)


def test_pth_with_model_key_round_trip(tmp_path: Path) -> None:
    expected = _other_values(seed=2)
    path = tmp_path / "wrapped.pt"
    torch.save({"model": expected}, path)

    model = TinyNet()
    assert load_state_dict(model, path).ok
    _assert_model_equals(model, expected)


def test_pth_detection_checkpointer_format_reads_only_model(tmp_path: Path) -> None:
    expected = _other_values(seed=3)
    source = TinyNet()
    optimizer = torch.optim.SGD(source.parameters(), lr=0.01, momentum=0.9)
    source.conv(torch.zeros(1, 2, 3, 3)).sum().backward()
    optimizer.step()  # fills the momentum buffers: tensors outside `model`
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[10, 20])
    path = tmp_path / "model_final.pth"
    torch.save(
        {
            "model": expected,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "iteration": 89999,
            "trainer": {"iteration": 89999, "hooks": {}},
        },
        path,
    )

    state = read_state_dict(path)
    assert list(state) == list(expected)
    model = TinyNet()
    load_state_dict(model, path)
    _assert_model_equals(model, expected)


def test_pth_with_custom_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "custom.pth"
    torch.save({"model": _other_values(seed=4), "trainer": CustomThing()}, path)

    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert "arbitrary Python objects" in message
    assert "CustomThing" in message
    assert str(path) in message
    assert "\n" not in message


def test_pth_with_code_payload_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": _other_values(seed=5), "x": Payload(marker)}, path)

    with pytest.raises(CheckpointError, match="system"):
        read_state_dict(path)
    assert not marker.exists()


class HistoryBuffer:
    """Pickled as mmengine's message-hub buffers are: numpy values and bound methods (which pickle
    rebuilds with getattr)."""

    def __init__(self) -> None:
        self.values = np.arange(3.0)
        self.step = np.int64(7)
        self.methods = {"min": self.min}

    def min(self) -> float:
        return float(self.values.min())


def test_mmengine_checkpoint_with_training_state_reads_only_the_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    expected = _other_values(seed=6)
    fake = types.ModuleType("mmengine.logging.history_buffer")
    HistoryBuffer.__module__ = fake.__name__
    fake.HistoryBuffer = HistoryBuffer  # type: ignore[attr-defined]
    for name in ("mmengine", "mmengine.logging"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    path = tmp_path / "epoch_12.pth"
    torch.save(
        {
            "meta": {"epoch": 12, "seed": np.int64(0), "dataset_meta": {"classes": ("a", "b")}},
            "state_dict": expected,
            "message_hub": {"log_scalars": {"train/loss": HistoryBuffer()}},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.01}]},
        },
        path,
    )
    for name in ("mmengine", "mmengine.logging", fake.__name__):
        monkeypatch.delitem(sys.modules, name)  # reading must not need (or import) mmengine
    with caplog.at_level(logging.INFO, logger="dyhead_serve.checkpoint"):
        state = read_state_dict(path)
    assert set(state) == set(expected) and all(torch.equal(state[k], expected[k]) for k in expected)
    assert "mmengine.logging.history_buffer.HistoryBuffer" in caplog.text and "getattr" in caplog.text
    assert fake.__name__ not in sys.modules


# ---------------------------------------------------------------------------------- .pkl


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_pkl_numpy_model_zoo_format(tmp_path: Path, protocol: int) -> None:
    weight = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    index = np.array([[0, 1], [2, 3]], dtype=np.int64)
    path = tmp_path / "model_final.pkl"
    with path.open("wb") as file:
        pickle.dump(
            {
                "model": {"conv.weight": weight, "attn.relative_position_index": index},
                "__author__": "Detectron2 Model Zoo",
                "matching_heuristics": True,
            },
            file,
            protocol=protocol,
        )

    state = read_state_dict(path)
    assert list(state) == ["conv.weight", "attn.relative_position_index"]
    assert state["conv.weight"].dtype == torch.float32
    assert state["conv.weight"][1, 2, 1, 0].item() == 22.0  # 1*12 + 2*4 + 1*2 + 0
    assert state["attn.relative_position_index"].dtype == torch.int64
    assert state["attn.relative_position_index"].tolist() == [[0, 1], [2, 3]]


def test_pkl_bare_dict_drops_non_array_values(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "bare.pkl"
    with path.open("wb") as file:
        pickle.dump({"__author__": "MSRA", "fc.bias": np.array([1.5, -2.0], dtype=np.float32)}, file)

    caplog.set_level(logging.DEBUG, logger=LOGGER)
    state = read_state_dict(path)
    assert list(state) == ["fc.bias"]
    assert state["fc.bias"].tolist() == [1.5, -2.0]
    assert "'__author__'" in caplog.text


def _py2_str(data: bytes) -> bytes:
    """A Python 2 ``str`` in a protocol 2 pickle (BINSTRING)."""
    return b"T" + struct.pack("<i", len(data)) + data


def _py2_float32_array(values: list[float]) -> bytes:
    """A float32 vector as Python 2 numpy 1.x pickled it: numpy.core spelling, str data."""
    data = np.array(values, dtype="<f4").tobytes()
    dtype = b"cnumpy\ndtype\n" + _py2_str(b"f4") + b"K\x00K\x01\x87R"
    dtype_state = b"(K\x03" + _py2_str(b"<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    return (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
        + _py2_str(b"b")
        + b"\x87R"
        + b"(K\x01"
        + b"K" + bytes([len(values)]) + b"\x85"  # shape (n,)
        + dtype + dtype_state
        + b"\x89"  # not Fortran order
        + _py2_str(data)
        + b"tb"
    )  # fmt: skip


def test_pkl_python2_numpy1_pickle(tmp_path: Path) -> None:
    values = [0.25, -1.0, 3.5]
    # {"model": {"res2.conv1.weight": array}, "__author__": "Detectron"} written as Python 2 did
    body = (
        b"\x80\x02}"
        + _py2_str(b"model") + b"}" + _py2_str(b"res2.conv1.weight") + _py2_float32_array(values) + b"s"
        + b"s"
        + _py2_str(b"__author__") + _py2_str(b"Detectron") + b"s"
        + b"."
    )  # fmt: skip
    path = tmp_path / "R-50.pkl"
    path.write_bytes(body)

    state = read_state_dict(path)
    assert list(state) == ["res2.conv1.weight"]
    assert state["res2.conv1.weight"].tolist() == values


def test_pkl_of_pickled_tensors(tmp_path: Path) -> None:
    expected = _other_values(seed=6)
    path = tmp_path / "tensors.pkl"
    with path.open("wb") as file:
        pickle.dump({"model": expected}, file)

    model = TinyNet()
    assert load_state_dict(model, path).ok
    _assert_model_equals(model, expected)


def _write_payload_pickle(path: Path, marker: Path) -> None:
    with path.open("wb") as file:
        pickle.dump({"model": {"w": np.zeros(2, dtype=np.float32), "b": Payload(marker)}}, file, protocol=2)


def test_payload_pickle_runs_code_when_unpickled_unsafely(tmp_path: Path) -> None:
    # Proves the payload is live, so the refusal test below means something.
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    _write_payload_pickle(path, marker)
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_pkl_with_code_payload_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    _write_payload_pickle(path, marker)

    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert f"{os.system.__module__}.system" in message  # posix.system on Linux
    assert "arbitrary Python objects" in message
    assert str(path) in message
    assert not marker.exists()


def test_pkl_with_custom_class_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "custom.pkl"
    with path.open("wb") as file:
        pickle.dump({"w": np.zeros(2), "thing": CustomThing()}, file)

    with pytest.raises(CheckpointError, match=r"refusing global .*test_checkpoint\.CustomThing"):
        read_state_dict(path)


# ------------------------------------------------------------ format by content, not suffix


def _save_torch_legacy(obj: object, path: Path) -> None:
    torch.save(obj, path, _use_new_zipfile_serialization=False)


def _save_plain_pickle(obj: object, path: Path) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


@pytest.mark.parametrize(
    ("save", "expected_format"),
    [
        (torch.save, CheckpointFormat.TORCH),
        (_save_torch_legacy, CheckpointFormat.TORCH),
        (_save_plain_pickle, CheckpointFormat.PICKLE),
    ],
    ids=["torch-zip", "torch-legacy", "plain-pickle"],
)
@pytest.mark.parametrize("suffix", [".pth", ".pt", ".pkl"])
def test_format_comes_from_the_contents_whatever_the_suffix(
    tmp_path: Path, save: Callable[[object, Path], None], expected_format: CheckpointFormat, suffix: str
) -> None:
    """The official Swin-T backbone, swin_tiny_patch4_window7_224_d2.pth, is a plain pickle."""
    expected = _other_values(seed=8)
    path = tmp_path / f"weights{suffix}"
    save({"model": expected}, path)

    assert checkpoint_format(path) is expected_format
    model = TinyNet()
    assert load_state_dict(model, path).ok
    _assert_model_equals(model, expected)


def test_plain_pickle_of_numpy_arrays_named_pth(tmp_path: Path) -> None:
    path = tmp_path / "swin_tiny_patch4_window7_224_d2.pth"
    _save_plain_pickle({"model": {"patch_embed.proj.bias": np.array([0.5, -1.0], dtype=np.float32)}}, path)
    assert read_state_dict(path)["patch_embed.proj.bias"].tolist() == [0.5, -1.0]


@pytest.mark.parametrize(
    "save",
    [torch.save, _save_torch_legacy, _save_plain_pickle],
    ids=["torch-zip", "torch-legacy", "plain-pickle"],
)
@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_code_payload_is_refused_whatever_the_format_and_suffix(
    tmp_path: Path, save: Callable[[object, Path], None], suffix: str
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    save({"model": {"w": torch.zeros(2)}, "x": Payload(marker)}, path)

    with pytest.raises(CheckpointError, match="system") as info:
        read_state_dict(path)
    assert "arbitrary Python objects" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()


def test_pickle_that_mimics_the_legacy_torch_header_is_still_refused(tmp_path: Path) -> None:
    """A pickle that starts with torch's magic number goes to torch.load(weights_only=True),
    which refuses globals as well."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(
        pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2) + pickle.dumps(Payload(marker), protocol=2)
    )
    assert checkpoint_format(path) is CheckpointFormat.TORCH
    with pytest.raises(CheckpointError):
        read_state_dict(path)
    assert not marker.exists()


# ----------------------------------------------------------------------- broken files


def _valid_pth_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "valid.pth"
    torch.save(_other_values(seed=7), path)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("name", "make_bytes"),
    [
        ("truncated.pth", lambda valid: valid[: len(valid) // 2]),
        ("random.pth", lambda valid: np.random.default_rng(0).bytes(300)),
        ("empty.pth", lambda valid: b""),
        ("random.pkl", lambda valid: np.random.default_rng(1).bytes(300)),
        ("empty.pkl", lambda valid: b""),
        ("truncated.pkl", lambda valid: pickle.dumps({"w": np.zeros(64)})[:100]),
    ],
)
def test_corrupt_file_is_one_line_error(tmp_path: Path, name: str, make_bytes: object) -> None:
    path = tmp_path / name
    path.write_bytes(make_bytes(_valid_pth_bytes(tmp_path)))  # type: ignore[operator]

    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert message.startswith(f"checkpoint {path}: corrupt")
    assert "\n" not in message
    assert len(message) < 400
    assert "https://" not in message  # torch's advice paragraphs are cut


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match=f"^checkpoint {path}: no such file$"):
        load_state_dict(TinyNet(), path)


def test_unknown_suffix(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"unknown suffix '\.ckpt'"):
        read_state_dict(path)


def test_no_tensors(tmp_path: Path) -> None:
    path = tmp_path / "meta.pkl"
    path.write_bytes(pickle.dumps({"__author__": "x"}))
    with pytest.raises(CheckpointError, match="holds no tensors"):
        read_state_dict(path)


# ------------------------------------------------------------------ DDP prefix


def test_ddp_module_prefix_is_stripped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    expected = _other_values(seed=8)
    path = tmp_path / "ddp.pth"
    torch.save({"model": {f"module.{name}": tensor for name, tensor in expected.items()}}, path)

    caplog.set_level(logging.INFO, logger=LOGGER)
    model = TinyNet()
    assert load_state_dict(model, path).ok
    _assert_model_equals(model, expected)
    assert "'module.' prefix" in caplog.text


def test_module_prefix_on_some_keys_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pth"
    torch.save({"module.a": torch.zeros(1), "b": torch.zeros(1)}, path)
    assert list(read_state_dict(path)) == ["module.a", "b"]


# ------------------------------------------------------------- report and loading


def _mismatched_checkpoint() -> dict[str, torch.Tensor]:
    """conv.bias missing, extra.weight unexpected, head shaped for 5 classes instead of 3."""
    torch.manual_seed(9)
    state = dict(TinyNet(num_classes=5).state_dict())
    del state["conv.bias"]
    state["extra.weight"] = torch.ones(2)
    return state


def test_strict_mismatch_raises_with_report_and_loads_nothing() -> None:
    model = TinyNet()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict(model, _mismatched_checkpoint())
    report = info.value.report
    assert report.missing_keys == ["conv.bias"]
    assert report.unexpected_keys == ["extra.weight"]
    assert report.shape_mismatches == [
        ShapeMismatch("head.weight", (5, 4), (3, 4)),
        ShapeMismatch("head.bias", (5,), (3,)),
    ]
    assert not report.ok
    assert str(info.value) == report.format()
    assert report.format() == (
        "checkpoint the given state dict does not match the model: "
        "1 missing key, 1 unexpected key, 2 shape mismatches\n"
        "missing keys (in the model, not in the checkpoint): 1\n"
        "  conv.bias\n"
        "unexpected keys (in the checkpoint, not in the model): 1\n"
        "  extra.weight\n"
        "shape mismatches (not loaded): 2\n"
        "  head.weight: (5, 4) in file vs (3, 4) in model\n"
        "  head.bias: (5,) in file vs (3,) in model"
    )
    _assert_model_equals(model, before)


def test_non_strict_loads_what_matches_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    model = TinyNet()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    checkpoint = _mismatched_checkpoint()

    caplog.set_level(logging.INFO, logger=LOGGER)
    report = load_state_dict(model, checkpoint, strict=False)
    assert not report.ok
    loaded = model.state_dict()
    assert torch.equal(loaded["conv.weight"], checkpoint["conv.weight"])
    assert torch.equal(loaded["relative_position_index"], checkpoint["relative_position_index"])
    for kept in ("conv.bias", "head.weight", "head.bias"):
        assert torch.equal(loaded[kept], before[kept]), kept
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert [record.getMessage() for record in warnings] == [report.format()]
    assert "loaded 2 tensors from the given state dict" in caplog.text


def test_success_logs_one_info_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ok.pth"
    torch.save(_other_values(seed=10), path)
    caplog.set_level(logging.INFO, logger=LOGGER)
    load_state_dict(TinyNet(), path)
    messages = [record.getMessage() for record in caplog.records if record.name == LOGGER]
    assert messages == [f"loaded 5 tensors from {path}"]


def test_integer_buffer_is_compared_and_loaded() -> None:
    expected = _other_values(seed=11)
    model = TinyNet()
    load_state_dict(model, expected)
    assert model.state_dict()["relative_position_index"].tolist() == [[30, 40, 50], [0, 10, 20]]

    expected["relative_position_index"] = torch.arange(4).view(2, 2)
    with pytest.raises(
        CheckpointMismatchError, match=r"relative_position_index: \(2, 2\) in file vs \(2, 3\)"
    ):
        load_state_dict(model, expected)


def test_dtype_is_converted_to_the_model_dtype() -> None:
    expected = {
        name: tensor.half() if tensor.is_floating_point() else tensor
        for name, tensor in _other_values(seed=12).items()
    }
    model = TinyNet()
    load_state_dict(model, expected)
    assert model.conv.weight.dtype == torch.float32
    _assert_model_equals(model, expected)


def test_format_groups_keys_and_caps_long_sections() -> None:
    report = LoadReport(
        missing_keys=["head.cls.weight", "head.cls.bias"] + [f"blocks.{i}.weight" for i in range(25)],
        source="ckpt.pth",
    )
    lines = report.format().splitlines()
    assert lines[0] == "checkpoint ckpt.pth does not match the model: 27 missing keys"
    assert lines[1] == "missing keys (in the model, not in the checkpoint): 27"
    assert lines[2] == "  head.cls.{weight, bias}"
    assert lines[3] == "  blocks.0.weight"
    assert lines[21] == "  blocks.18.weight"
    assert lines[22] == "  ... and 6 more"
    assert len(lines) == 23


def test_ok_report() -> None:
    report = LoadReport(source="x.pth")
    assert report.ok
    assert report.format() == "checkpoint x.pth matches the model"
