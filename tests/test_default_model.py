"""The embedded default model: shipped weights, shipped ONNX export in sync with them, and
predict working out of the box without network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from dyhead_serve import zoo
from dyhead_serve.checkpoint import sha256_of
from dyhead_serve.checkpoint.safetensors_file import read_safetensors, tensor_locations
from dyhead_serve.cli import main
from dyhead_serve.data.sample_image import synthetic_photo
from dyhead_serve.data.synthetic import SHAPE_CLASSES
from dyhead_serve.export.verify import compare_backends
from dyhead_serve.runtime.loader import load_backend
from dyhead_serve.runtime.options import ModelOptions

SHIPPED = Path(zoo.__file__).parent / "zoo_files" / "default"


def test_shipped_files_are_small_and_consistent():
    weights = SHIPPED / "model.safetensors"
    assert weights.stat().st_size <= 15 * 1024 * 1024
    entry = zoo.get_model("default")
    assert entry.sha256 and sha256_of(weights) == entry.sha256
    meta = json.loads((SHIPPED / "model.json").read_text())
    assert meta["provenance"]["weights_sha256"] == entry.sha256, "model.onnx was exported from other weights"
    assert meta["provenance"]["weights_file"] == "model.safetensors"
    assert meta["class_names"] == list(SHAPE_CLASSES)
    assert sorted(p.name for p in SHIPPED.iterdir()) == [
        "config.yaml",
        "model.json",
        "model.onnx",
        "model.safetensors",
    ]


def test_the_weights_are_stored_once():
    """model.onnx reads its weights from model.safetensors (ONNX external data), byte for byte
    the tensors PyTorch loads; only a few folded constants stay inside the graph."""
    graph = onnx.load(str(SHIPPED / "model.onnx"), load_external_data=False)
    external = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    inline_bytes = sum(len(t.raw_data) for t in graph.graph.initializer if t not in external)
    locations, _ = tensor_locations(SHIPPED / "model.safetensors")
    spans = {(w.offset, w.length) for w in locations.values()}
    for tensor in external:
        info = {entry.key: entry.value for entry in tensor.external_data}
        assert info["location"] == "model.safetensors"
        assert (int(info["offset"]), int(info["length"])) in spans, tensor.name
    weight_bytes = sum(w.length for w in locations.values())
    assert inline_bytes < 0.01 * weight_bytes
    assert (SHIPPED / "model.onnx").stat().st_size < 0.25 * weight_bytes
    state = read_safetensors(SHIPPED / "model.safetensors")
    loaded = onnx.load(str(SHIPPED / "model.onnx"))  # with its external data
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in loaded.graph.initializer}
    name = "head.cls_logits.weight"
    assert name in arrays and np.array_equal(arrays[name], state[name].numpy())


def test_default_runs_in_onnxruntime_and_matches_torch():
    ort_backend = load_backend()  # no model named: the embedded default
    torch_backend = load_backend(ModelOptions("default", backend="torch", device="cpu"))
    assert ort_backend.name == "onnxruntime" and torch_backend.name == "torch"
    assert ort_backend.class_names == torch_backend.class_names == list(SHAPE_CLASSES)
    report = compare_backends(torch_backend, ort_backend, synthetic_photo(256, 384, seed=5))
    assert report.ok, report.format()


def test_predict_without_a_model_uses_the_default(tmp_path, capsys):
    from PIL import Image

    from dyhead_serve.data.synthetic import generate_synthetic_dataset

    paths = generate_synthetic_dataset(tmp_path / "shapes", num_train=0, num_val=1, image_size=256, seed=7)
    image = next(Path(paths.image_root("val")).glob("*.png"))
    assert Image.open(image).size[0] > 0
    code = main(["-q", "predict", str(image)])
    out = capsys.readouterr().out
    assert code == 0
    (result,) = json.loads(out)
    assert result["detections"], "the default model finds the generated shapes"
    assert {d["label"] for d in result["detections"]} <= set(SHAPE_CLASSES)


@pytest.mark.parametrize("name", ["default"])
def test_zoo_lists_the_default(name, capsys):
    assert main(["zoo", "list"]) == 0
    assert name in capsys.readouterr().out
