"""mmdetection's DyHead models through ONNX: the export of mmdetection-layout networks, model.json
carrying mmdetection's pre- and post-processing, and ONNX Runtime reproducing mmdetection's
detections (boxes within 0.01 px, scores within 1e-4, same classes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dyhead_serve.config import load_config
from dyhead_serve.export.onnx_export import export_onnx
from dyhead_serve.modeling.build import build_model
from dyhead_serve.runtime.base import make_predictor
from dyhead_serve.runtime.onnxruntime_backend import OnnxRuntimeBackend
from dyhead_serve.runtime.torch_backend import TorchBackend, class_names_for, detector_backend
from tests.mmdet.conftest import CAFFE, SIMPLE, SMALL, SWIN, assert_matches, photo, reference, torch_backend

_TINY = [
    "MODEL.DEVICE", "cpu", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.DYHEAD.CHANNELS", "32",
    "MODEL.DYHEAD.NUM_CONVS", "2", "MODEL.ATSS.NUM_CLASSES", "5", "INPUT.MIN_SIZE_TEST", "160",
    "INPUT.MAX_SIZE_TEST", "224",
]  # fmt: skip
TINY = {
    # the "simple" setting on a ResNet-18: OpenCV resize, 3x3 predictors, padding to 32
    "resnet": (SIMPLE, [*_TINY, "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]),
    # mmdetection's Swin (nn.Unfold patch merging) at 32 channels
    "swin": (SWIN, [*_TINY, "MODEL.SWINT.EMBED_DIM", "32", "MODEL.SWINT.DEPTHS", "[2, 2, 2, 2]",
                    "MODEL.SWINT.NUM_HEADS", "[1, 2, 4, 8]", "MODEL.SWINT.WINDOW_SIZE", "7"]),
}  # fmt: skip


def _tiny_backend(kind: str) -> TorchBackend:
    config, overrides = TINY[kind]
    cfg = load_config(config, overrides)
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # random weights that give detections
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 1 / math.sqrt(p[0].numel()))
            elif name.endswith("cls_logits.bias"):
                p.fill_(-2.0)
    return detector_backend(cfg, model, f"tiny-{kind}", class_names_for(5), device="cpu")


def _assert_same_detections(backend: TorchBackend, ort: OnnxRuntimeBackend) -> None:
    image = photo("chelsea")
    expected = make_predictor(backend)(image)
    got = make_predictor(ort)(image)
    assert len(expected) > 0
    assert got.classes.tolist() == expected.classes.tolist()
    torch.testing.assert_close(got.boxes, expected.boxes, atol=0.01, rtol=0)
    torch.testing.assert_close(got.scores, expected.scores, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["resnet", "swin"])
def test_mmdetection_layout_networks_export_and_run_in_onnxruntime(kind: str, tmp_path: Path) -> None:
    backend = _tiny_backend(kind)
    export_onnx(backend, tmp_path)
    ort = OnnxRuntimeBackend(tmp_path, device="cpu")
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["decoder"]["spec"]["rules"] == "mmdet"
    assert meta["decoder"]["spec"]["box_stds"] == [0.1, 0.1, 0.2, 0.2]
    assert meta["input_spec"]["resize_rule"] == "mmdet"
    assert meta["input_spec"]["resize_backend"] == ("cv2" if kind == "resnet" else "pillow")
    assert ort.input_spec == backend.input_spec
    _assert_same_detections(backend, ort)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, checkpoints):
    """``exported(config, overrides)``: a folder written by export_onnx for the real model."""
    folders: dict[tuple[str, tuple[str, ...]], Path] = {}

    def export(config: str, overrides: list[str]) -> Path:
        key = (config, tuple(overrides))
        if key not in folders:
            weights = checkpoints(config) if config != SWIN else None
            folders[key] = tmp_path_factory.mktemp("mmdet_onnx")
            export_onnx(torch_backend(config, overrides, weights), folders[key])
        return folders[key]

    return export


@pytest.mark.slow
@pytest.mark.parametrize("config", [CAFFE, SIMPLE, SWIN])
def test_onnxruntime_reproduces_mmdetection_on_the_small_astronaut(config: str, exported) -> None:
    ort = OnnxRuntimeBackend(exported(config, SMALL), device="cpu")
    assert_matches(make_predictor(ort)(photo("astronaut")), reference(config, "astronaut", "small"))


@pytest.mark.slow
@pytest.mark.parametrize("config", [CAFFE, SIMPLE])
def test_onnxruntime_reproduces_mmdetection_on_full_size_photographs(config: str, exported) -> None:
    predictor = make_predictor(OnnxRuntimeBackend(exported(config, []), device="cpu"))
    for name in ("astronaut", "coffee", "chelsea"):
        assert_matches(predictor(photo(name)), reference(config, name, "full"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["resnet", "swin"])
def test_torch_export_of_mmdetection_layout_networks(kind: str, tmp_path: Path) -> None:
    """Both layouts export through torch.export and reproduce PyTorch; the "simple" setting's
    padding to 32 makes P6/P7 ceilings of the input's blocks, which torch.export assumes away
    under 96 px: the export's own check at 32 and 64 px passes (an example of 64x96 once
    specialised P7 to 1x1 silently, see export/torch_export.py)."""
    backend = _tiny_backend(kind)
    export_onnx(backend, tmp_path, exporter="dynamo")
    _assert_same_detections(backend, OnnxRuntimeBackend(tmp_path, device="cpu"))
