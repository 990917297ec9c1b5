"""The ``predict`` job: detect objects in image files and report them as JSON."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dyhead_serve.pipeline.draw import draw_detections
from dyhead_serve.pipeline.image_io import ImageDecodeError, read_image
from dyhead_serve.pipeline.predictor import Predictor, UnsupportedImageSizeError
from dyhead_serve.runtime.base import make_predictor
from dyhead_serve.runtime.torch_backend import build_torch_backend

__all__ = ["PredictResult", "build_torch_predictor", "predict_files"]

logger = logging.getLogger(__name__)

PredictResult = dict[str, Any]


def build_torch_predictor(cfg: Any, weights: str | Path | None, device: str | None = None) -> Predictor:
    """A Predictor running the detector ``cfg`` describes with ``weights`` (loaded strictly)."""
    if device is not None:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.merge_from_list(["MODEL.DEVICE", device])
    return make_predictor(build_torch_backend(cfg, weights, Path(str(weights or "random")).stem))


def predict_files(
    predictor: Predictor,
    paths: Sequence[str],
    *,
    score_threshold: float | None = None,
    out_dir: Path | None = None,
    draw_threshold: float = 0.0,
) -> tuple[list[PredictResult], list[str]]:
    """Run the predictor on each file; a file that cannot be read is reported, not fatal.

    With ``out_dir``, each image is also written there with the detections scoring at least
    ``draw_threshold`` drawn (the JSON keeps every detection above ``score_threshold``).

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
            detections = predictor(image, score_threshold=score_threshold)
        except UnsupportedImageSizeError as exc:
            errors.append(f"{path}: {exc}")
            continue
        except (FileNotFoundError, ImageDecodeError, OSError) as exc:
            errors.append(str(exc))
            continue
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
            draw_detections(image, detections, draw_threshold).save(target, quality=92)
    return results, errors
