"""One loader for every way of naming a model, and its errors."""

from __future__ import annotations

import pytest

from dyhead_serve import zoo
from dyhead_serve.model_source import ModelSourceError
from dyhead_serve.runtime.base import BackendError
from dyhead_serve.runtime.loader import load_backend


def test_unknown_backend_and_conflicting_arguments(tmp_path):
    with pytest.raises(BackendError, match="unknown backend"):
        load_backend(tmp_path, backend="tflite")
    with pytest.raises(ModelSourceError, match="not both"):
        load_backend("x", config="dyhead_r50_atss_fpn_1x")


def test_folder_without_onnx(tmp_path):
    with pytest.raises(BackendError, match=r"no model\.onnx"):
        load_backend(tmp_path, backend="onnxruntime")
    with pytest.raises(BackendError, match="torch backend needs"):
        load_backend(tmp_path, backend="torch")


def test_unknown_zoo_name_lists_known_ones():
    with pytest.raises(zoo.ZooError, match="dyhead_r50_atss_fpn_1x"):
        load_backend("no_such_model")


def test_zoo_without_network_fails_at_once_and_says_how(tmp_path, monkeypatch):
    monkeypatch.setenv("DYHEAD_SERVE_CACHE", str(tmp_path))
    entry = zoo.get_model("dyhead_r50_atss_fpn_1x")
    # an unresolvable host stands in for "no network" on machines that have one
    monkeypatch.setattr(
        zoo,
        "ZOO",
        {entry.name: zoo.ZooModel(entry.name, entry.config, "https://invalid.invalid/w.pth", "", "")},
    )
    with pytest.raises(zoo.ZooError) as info:
        load_backend(entry.name)
    message = str(info.value)
    assert "--weights" in message and "https://invalid.invalid/w.pth" in message
    assert not list((tmp_path / "weights").glob("*"))  # nothing half-written is left


def test_zoo_download_verifies_checksum(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(b"weights")
    target = tmp_path / "cache" / "w.pth"
    with pytest.raises(zoo.ZooError, match="checksum"):
        zoo.download(source.as_uri(), target, sha256="0" * 64, progress=False)
    assert not target.exists()
    zoo.download(source.as_uri(), target, sha256=zoo.sha256_of(source), progress=False)
    assert target.read_bytes() == b"weights"
