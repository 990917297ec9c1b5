"""Shared fixtures: reference key lists, checkpoints with exactly the official keys, images."""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

# Servers the tests start serve gRPC only where a test asks for it, on a free port: the default
# port (8001) may be taken on a shared machine, and most tests speak HTTP only.
os.environ.setdefault("DYHEAD_SERVE_GRPC_PORT", "0")
# Tests never read or write the user's cache (downloaded weights, ONNX exports, engines): a fresh
# folder for the session, which child processes inherit; tests that need their own set it.
os.environ["DYHEAD_SERVE_CACHE"] = tempfile.mkdtemp(prefix="dyhead-serve-test-cache-")
atexit.register(shutil.rmtree, os.environ["DYHEAD_SERVE_CACHE"], ignore_errors=True)

DATA = Path(__file__).parent / "data"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (a script folder, not a package) as ``benchmark_<name>``,
    with ``benchmarks/`` on the path while it imports, as ``python benchmarks/<name>.py`` has it
    (the scripts import their sibling ``environment``)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def reference_keys(config_name: str) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """(name, shape, dtype) of every tensor of the official model, in state-dict order."""
    entries = []
    for line in (DATA / "reference_keys" / f"{config_name}.keys.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        shape = tuple(int(v) for v in parts[1].split("x")) if len(parts) > 1 else ()
        dtype = torch.int64 if len(parts) > 2 and parts[2] == "int64" else torch.float32
        entries.append((parts[0], shape, dtype))
    return entries


def official_format_checkpoint(config_name: str, path: Path, seed: int = 0) -> Path:
    """Write a Detectron2-style ``.pth`` ({"model": ..., "iteration": ...}) holding exactly the
    official key names and shapes, with random values (positive variances)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape, dtype in reference_keys(config_name):
        if dtype == torch.int64:
            state[name] = torch.randint(0, 10, shape, generator=gen)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[name] = torch.randn(shape, generator=gen) * 0.05
    torch.save({"model": state, "iteration": 89999}, path)
    return path


@pytest.fixture(scope="session")
def atss_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return official_format_checkpoint("dyhead_r50_atss_fpn_1x", tmp_path_factory.mktemp("ckpt") / "atss.pth")


@pytest.fixture
def placeholder_weights(tmp_path: Path) -> Path:
    """A file that stands for a checkpoint where only its bytes count (cache keys): not loadable."""
    path = tmp_path / "atss.pth"
    path.write_bytes(b"weights v1")
    return path


@pytest.fixture(scope="session")
def photo_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small textured RGB JPEG."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:120, 0:160]
    image = np.stack([xx * 1.5, yy * 2.0, (xx + yy) * 0.9], axis=-1) + rng.normal(0, 10, (120, 160, 3))
    path = tmp_path_factory.mktemp("img") / "photo.jpg"
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=95)
    return path


# A narrow ResNet-18 DyHead-ATSS: every code path of the official model, small enough for CI.
TINY_OVERRIDES = [
    "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.DYHEAD.CHANNELS", "32", "MODEL.DYHEAD.NUM_CONVS", "2", "MODEL.ATSS.CHANNELS", "32",
    "MODEL.ATSS.NUM_CLASSES", "5", "INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "384",
]  # fmt: skip


def tiny_checkpoint(path: Path, seed: int = 0, meta: str = "dyhead_r50_atss_fpn_1x") -> Path:
    """Random weights for the tiny model, scaled so that it produces detections."""
    from dyhead_serve.config import load_config
    from dyhead_serve.modeling.build import build_model

    torch.manual_seed(seed)
    model = build_model(load_config(meta, overrides=["MODEL.DEVICE", "cpu", *TINY_OVERRIDES]))
    state = model.state_dict()
    randomise_for_detections(state, seed)
    torch.save({"model": state}, path)
    return path


def randomise_for_detections(state: dict[str, torch.Tensor], seed: int = 0) -> None:
    """Overwrite a state dict in place with random weights (He-scaled, positive variances, class
    logits biased to -1) with which a tiny detector produces detections."""
    gen = torch.Generator().manual_seed(seed)
    for name, value in state.items():
        if name.endswith("running_var"):
            value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
        elif value.is_floating_point() and value.dim() > 1:
            value.copy_(torch.randn(value.shape, generator=gen) * (2.0 / value[0].numel()) ** 0.5)
        elif name.endswith(("cls_logits.bias", "cls_score.bias")):
            value.fill_(-1.0)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pth")


def one_class_dense_decoder() -> dict:
    """A valid ``decoder`` entry of model.json for a one-class ATSS model (tests that write
    model.json files by hand)."""
    spec = {
        "kind": "atss",
        "strides": [8, 16, 32, 64, 128],
        "anchor_sizes": [[64.0], [128.0], [256.0], [512.0], [1024.0]],
        "anchor_aspect_ratios": [[1.0]],
        "anchor_offset": 0.0,
        "box_weights": [10.0, 10.0, 5.0, 5.0],
        "score_threshold": 0.05,
        "topk_candidates": 1000,
        "nms_threshold": 0.6,
        "max_detections": 100,
        "num_classes": 1,
    }
    return {"type": "dense", "spec": spec}
