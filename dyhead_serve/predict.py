"""The ``predict`` job: detect objects in image files and report them as JSON."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dyhead_serve.errors import UserError
from dyhead_serve.pipeline.draw import draw_detections
from dyhead_serve.pipeline.image_io import ImageDecodeError, read_image
from dyhead_serve.pipeline.postprocess import Detections
from dyhead_serve.pipeline.predictor import Predictor, UnsupportedImageSizeError

__all__ = ["PredictResult", "check_out_dir", "draw_files", "predict_files"]

logger = logging.getLogger(__name__)

PredictResult = dict[str, Any]


def predict_files(
    predictor: Predictor,
    paths: Sequence[str],
    *,
    score_threshold: float | None = None,
) -> tuple[list[PredictResult], list[Detections], list[str]]:
    """Run the predictor on each file; a file that cannot be read is reported, not fatal.

    Returns:
        (results, detections, errors): one JSON-ready dict and one :class:`Detections` per
        readable image (in the same order), and one message per failure.
    """
    results: list[PredictResult] = []
    found: list[Detections] = []
    errors: list[str] = []
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
        found.append(detections)
    return results, found, errors


def check_out_dir(out_dir: Path) -> None:
    """Create ``out_dir`` if needed, before any work is done.

    Raises:
        UserError: it names a file, or cannot be created.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out-dir {out_dir}: a file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out-dir {out_dir}: cannot create it ({exc.strerror or exc})") from None


def draw_files(
    results: Sequence[PredictResult], detections: Sequence[Detections], out_dir: Path, draw_threshold: float
) -> list[str]:
    """Write each image of ``results`` to ``out_dir`` with its detections scoring at least
    ``draw_threshold`` drawn. Each file is written whole or not at all (a temporary file renamed
    into place), and a failure (a full disk, say) is reported per file, not fatal.

    Returns:
        one message per image that could not be drawn.
    """
    errors: list[str] = []
    for result, found in zip(results, detections, strict=True):
        target = out_dir / (Path(result["file"]).stem + ".jpg")
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        try:
            image = read_image(result["file"])
            draw_detections(image, found, draw_threshold).save(partial, format="JPEG", quality=92)
            partial.replace(target)
        except (OSError, ImageDecodeError) as exc:
            partial.unlink(missing_ok=True)
            errors.append(f"{target}: not written ({getattr(exc, 'strerror', None) or exc})")
    return errors
