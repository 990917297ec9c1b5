"""The ``predict`` job: detect objects in image files and report them as JSON."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dyhead_serve.checkpoint import load_state_dict
from dyhead_serve.data.coco_classes import COCO_CLASS_NAMES
from dyhead_serve.modeling.build import build_model
from dyhead_serve.pipeline.draw import draw_detections
from dyhead_serve.pipeline.image_io import ImageDecodeError, read_image
from dyhead_serve.pipeline.predictor import Predictor
from dyhead_serve.pipeline.preprocess import InputSpec

__all__ = [
    "PredictResult",
    "build_torch_predictor",
    "class_names_for",
    "input_spec_from_config",
    "predict_files",
]

logger = logging.getLogger(__name__)

PredictResult = dict[str, Any]


def class_names_for(num_classes: int) -> list[str]:
    """COCO's names for 80-class models, ``class_<i>`` otherwise."""
    if num_classes == len(COCO_CLASS_NAMES):
        return list(COCO_CLASS_NAMES)
    return [f"class_{i}" for i in range(num_classes)]


def input_spec_from_config(cfg: Any, size_divisibility: int) -> InputSpec:
    """The test-time preprocessing a Detectron2 config describes."""
    return InputSpec(
        channel_order=cfg.INPUT.FORMAT,
        pixel_mean=tuple(float(v) for v in cfg.MODEL.PIXEL_MEAN),
        pixel_std=tuple(float(v) for v in cfg.MODEL.PIXEL_STD),
        min_size=int(cfg.INPUT.MIN_SIZE_TEST),
        max_size=int(cfg.INPUT.MAX_SIZE_TEST),
        size_divisibility=size_divisibility,
    )


def resolve_device(device: str) -> str:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but no CUDA GPU is available; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or auto")
    return device


def build_torch_predictor(cfg: Any, weights: str | Path | None, device: str) -> Predictor:
    """Build the configured detector on ``device``, load ``weights`` strictly, wrap it in a Predictor."""
    model = build_model(cfg)
    if weights is not None:
        load_state_dict(model, str(weights), strict=True)
    else:
        logger.warning("no weights given: the detector has random weights")
    model = model.to(device).eval()
    num_classes = model.num_classes
    spec = input_spec_from_config(cfg, model.size_divisibility)
    return Predictor(model, model.decoder, spec, class_names_for(num_classes), device)


def predict_files(
    predictor: Predictor,
    paths: Sequence[str],
    *,
    score_threshold: float | None = None,
    out_dir: Path | None = None,
) -> tuple[list[PredictResult], list[str]]:
    """Run the predictor on each file; a file that cannot be read is reported, not fatal.

    Returns:
        (results, errors): one JSON-ready dict per readable image and one message per failure.
    """
    results: list[PredictResult] = []
    errors: list[str] = []
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    for path in paths:
        try:
            image = read_image(path)
        except (FileNotFoundError, ImageDecodeError, OSError) as exc:
            errors.append(str(exc))
            continue
        detections = predictor(image, score_threshold=score_threshold)
        logger.info("%s: %d detections (%.0f ms)", path, len(detections), predictor.last_times.network * 1000)
        results.append(
            {
                "file": path,
                "width": detections.width,
                "height": detections.height,
                "detections": detections.to_json(),
            }
        )
        if out_dir is not None:
            target = out_dir / (Path(path).stem + ".jpg")
            draw_detections(image, detections).save(target, quality=92)
    return results, errors
