"""One loader for every way of naming a model, and its errors."""

from __future__ import annotations

import numpy as np
import pytest

from dyhead_serve import zoo
from dyhead_serve.checkpoint import DownloadError, download, sha256_of
from dyhead_serve.model_source import ModelSourceError
from dyhead_serve.runtime.base import BackendError
from dyhead_serve.runtime.loader import load_backend
from dyhead_serve.runtime.options import ModelOptions


def test_unknown_backend_and_conflicting_arguments(tmp_path):
    with pytest.raises(BackendError, match="unknown backend"):
        load_backend(ModelOptions(tmp_path, backend="tflite"))
    with pytest.raises(ModelSourceError, match="not both"):
        load_backend(ModelOptions("x", config="dyhead_r50_atss_fpn_1x"))


def test_folder_without_onnx(tmp_path):
    with pytest.raises(BackendError, match=r"no model\.onnx"):
        load_backend(ModelOptions(tmp_path, backend="onnxruntime"))
    with pytest.raises(BackendError, match="torch backend needs"):
        load_backend(ModelOptions(tmp_path, backend="torch"))


def test_unknown_zoo_name_lists_known_ones():
    with pytest.raises(zoo.ZooError, match="dyhead_r50_atss_fpn_1x"):
        load_backend(ModelOptions("no_such_model"))


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
        load_backend(ModelOptions(entry.name))
    message = str(info.value)
    assert "--weights" in message and "https://invalid.invalid/w.pth" in message
    assert not list((tmp_path / "weights").glob("*"))  # nothing half-written is left


def test_zoo_download_verifies_checksum(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(b"weights")
    target = tmp_path / "cache" / "w.pth"
    with pytest.raises(DownloadError, match="checksum"):
        download(source.as_uri(), target, sha256="0" * 64, progress=False)
    assert not target.exists()
    download(source.as_uri(), target, sha256=sha256_of(source), progress=False)
    assert target.read_bytes() == b"weights"


def test_exported_predictor_runs_the_folder_with_the_backend_asked_for(tmp_path):
    """The embedded model's folder carries its weights (model.safetensors) and names its config
    (zoo:default): ONNX Runtime runs model.onnx, torch rebuilds the detector; same detections."""
    import json
    import shutil
    from pathlib import Path

    import torch

    from dyhead_serve.data.synthetic import render_image
    from dyhead_serve.runtime.base import make_predictor
    from dyhead_serve.runtime.loader import load_backend
    from dyhead_serve.runtime.options import ModelOptions

    def load_exported_predictor(folder, backend="auto", device="cpu"):
        return make_predictor(load_backend(ModelOptions(str(folder), backend=backend, device=device)))

    folder = Path(zoo.__file__).parent / "zoo_files" / "default"
    image = render_image(np.random.default_rng(4), 320, 256)[0]
    onnx_dets = load_exported_predictor(folder, backend="onnxruntime", device="cpu")(image)
    torch_dets = load_exported_predictor(folder, backend="torch", device="cpu")(image)
    assert len(onnx_dets) == len(torch_dets) > 0
    torch.testing.assert_close(onnx_dets.boxes, torch_dets.boxes, atol=1e-2, rtol=0)

    bare = tmp_path / "bare"
    shutil.copytree(folder, bare, ignore=shutil.ignore_patterns("model.safetensors"))
    meta = json.loads((bare / "model.json").read_text())
    del meta["provenance"]["weights_file"]
    (bare / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BackendError, match="without its weights"):
        load_exported_predictor(bare, backend="torch")
