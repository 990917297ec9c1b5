"""Fixtures for the comparison with mmdetection itself.

``tests/data/mmdet/<config>.json`` holds mmdetection 3.3.0's detections (``inference_detector``
on the config's own test pipeline) for its three DyHead models with seed-0 random weights made
by :mod:`tests.mmdet.random_weights`, on scikit-image's astronaut, coffee and chelsea photos at
full size and, for astronaut, with the test Resize scale (640, 384) ("small"). They were produced
outside this repository (mmdetection, mmcv-lite with a torchvision stand-in for its two compiled
CPU kernels); only the numbers are here. Boxes are in original-image pixels, detections in
mmdetection's order (score descending).
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dyhead_serve.checkpoint import load_state_dict
from dyhead_serve.checkpoint.mmdet_keys import mmdet_key_map
from dyhead_serve.config import load_config
from dyhead_serve.config.mmdet import MMDET_CONFIGS
from dyhead_serve.modeling.build import build_model
from dyhead_serve.pipeline.postprocess import Detections
from dyhead_serve.runtime.torch_backend import (
    TorchBackend,
    build_torch_backend,
    class_names_for,
    detector_backend,
)
from tests.mmdet.random_weights import parse_key_list, random_state_dict, recommended_kwargs

DATA = Path(__file__).resolve().parents[1] / "data" / "mmdet"
CAFFE, SIMPLE, SWIN = MMDET_CONFIGS
SMALL = ["INPUT.MIN_SIZE_TEST", "384", "INPUT.MAX_SIZE_TEST", "640"]  # mmdetection's scale (640, 384)
BOX_PX, SCORE = 0.01, 1e-4  # mmdetection's detections: boxes within 0.01 px, scores within 1e-4


@cache
def fixture(config: str) -> dict[str, Any]:
    return json.loads((DATA / f"{config}.json").read_text())


def reference(config: str, photo: str, variant: str) -> dict[str, Any]:
    """mmdetection's record of one photo: shapes, scale factor and detections."""
    for image in fixture(config)["images"]:
        if (image["photo"], image["variant"]) == (photo, variant):
            return dict(image)
    raise KeyError(f"{config} has no {variant} {photo}")


@cache
def photo(name: str) -> np.ndarray:
    """A scikit-image photograph, RGB uint8, checked against the bytes mmdetection saw."""
    import skimage.data

    image = np.ascontiguousarray(getattr(skimage.data, name)())
    expected = next(i["rgb_sha256"] for i in fixture(SIMPLE)["images"] if i["photo"] == name)
    assert hashlib.sha256(image.tobytes()).hexdigest() == expected, f"scikit-image's {name} changed"
    return image


def write_photo(name: str, folder: Path) -> Path:
    from PIL import Image

    path = folder / f"{name}.png"
    if not path.exists():
        Image.fromarray(photo(name)).save(path)
    return path


def mmdet_state(config: str) -> dict[str, torch.Tensor]:
    """The seed-0 random weights of ``config`` in mmdetection's names (as the fixtures used);
    not cached: Swin-L's are 800 MB."""
    entries = parse_key_list(DATA / f"{config}.keys.txt")
    return random_state_dict(entries, 0, **recommended_kwargs(config))


def torch_backend(config: str, overrides: list[str], weights: Path | None = None) -> TorchBackend:
    """Our torch backend for an mmdetection config, with the checkpoint file ``weights`` or, when
    None, the same random weights loaded from memory (through the same key map)."""
    cfg = load_config(config, ["MODEL.DEVICE", "cpu", *overrides])
    if weights is not None:
        return build_torch_backend(cfg, weights, config)
    model = build_model(cfg)
    load_state_dict(model, mmdet_state(config), key_map=mmdet_key_map(model.state_dict().keys()))
    return detector_backend(cfg, model, config, class_names_for(model.num_classes))


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory):
    """``checkpoints(config)``: the path of an mmdetection 3.x checkpoint file of the weights."""
    folder = tmp_path_factory.mktemp("mmdet_checkpoints")

    def write(config: str) -> Path:
        path = folder / f"{config}_seed0.pth"
        if not path.exists():
            meta = {"mmdet_version": "3.3.0", "seed": 0}
            torch.save({"meta": meta, "state_dict": mmdet_state(config)}, path)
        return path

    return write


def assert_matches(detections: Detections, expected: dict[str, Any]) -> tuple[float, float]:
    """Same number, classes and order of detections as mmdetection's; boxes within 0.01 px and
    scores within 1e-4. Returns the largest box and score differences."""
    ref = expected["detections"]
    boxes = torch.tensor(ref["bboxes"], dtype=torch.float64)
    scores = torch.tensor(ref["scores"], dtype=torch.float64)
    assert len(detections) == len(scores), f"{len(detections)} detections, mmdetection has {len(scores)}"
    assert detections.classes.tolist() == ref["labels"]
    box_diff = float((detections.boxes.double() - boxes).abs().max()) if len(scores) else 0.0
    score_diff = float((detections.scores.double() - scores).abs().max()) if len(scores) else 0.0
    assert box_diff <= BOX_PX and score_diff <= SCORE, (box_diff, score_diff)
    return box_diff, score_diff


def detections_from_json(items: list[dict[str, Any]], height: int, width: int) -> Detections:
    """Detections as ``predict`` / the server write them."""
    return Detections(
        torch.tensor([d["box"] for d in items], dtype=torch.float64).reshape(-1, 4),
        torch.tensor([d["score"] for d in items], dtype=torch.float64),
        torch.tensor([d["class_id"] for d in items], dtype=torch.int64),
        [d["label"] for d in items],
        width=width,
        height=height,
    )
