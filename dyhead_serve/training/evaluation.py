"""COCO box AP of a predictor on a dataset, through pycocotools, as Detectron2's COCOEvaluator.

The predictor sees each image as the server would (RGB uint8, original size) and returns
detections in original pixels; class indices are mapped back to the dataset's category ids, the
detections are written to ``coco_instances_results.json``, and ``COCOeval`` (bbox, max
detections 1/10/100) gives the standard 12 numbers. ``coco_eval.json`` beside it holds ``AP``,
``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` and ``AP-<class>`` in percent (``null`` where
COCO cannot compute one, e.g. no object of that size).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from dyhead_serve.data.catalog import DatasetCatalog
from dyhead_serve.data.coco_json import DatasetDict, DatasetError, DatasetMetadata, read_coco_json
from dyhead_serve.data.loader import build_test_loader
from dyhead_serve.pipeline.postprocess import Detections

__all__ = [
    "COCO_METRICS",
    "CocoEvalResult",
    "ImagePredictor",
    "coco_evaluate",
    "detections_to_coco_results",
    "evaluate_datasets",
    "evaluate_on_dataset",
    "evaluate_test_datasets",
    "format_metrics_table",
    "run_inference",
]

logger = logging.getLogger(__name__)

# The first six numbers of COCOeval.stats for boxes, under Detectron2's names.
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
RESULTS_FILE = "coco_instances_results.json"
METRICS_FILE = "coco_eval.json"


class ImagePredictor(Protocol):
    """What evaluation needs of a predictor: RGB uint8 [H, W, 3] -> detections in original pixels
    (:class:`dyhead_serve.pipeline.predictor.Predictor` is one)."""

    def __call__(self, image: np.ndarray) -> Detections: ...


@dataclass
class CocoEvalResult:
    """The outcome of one evaluation.

    Attributes:
        metrics: ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` in percent (NaN where
            not computable), then ``AP-<class name>`` per class.
        table: pycocotools' 12-line summary ("Average Precision (AP) @[ IoU=0.50:0.95 ...").
        num_detections: detections evaluated.
    """

    metrics: dict[str, float]
    table: str
    num_detections: int

    def to_json(self) -> dict[str, float | None]:
        """``metrics`` with NaN written as ``None`` (strict JSON)."""
        return {key: (value if math.isfinite(value) else None) for key, value in self.metrics.items()}


def detections_to_coco_results(
    detections: Detections, image_id: int, dataset_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """COCO result entries (``bbox`` as [x, y, w, h]) with class indices mapped to dataset ids.

    Raises:
        DatasetError: a class index the dataset does not have.
    """
    boxes = detections.boxes.detach().cpu().float().numpy().reshape(-1, 4)
    xywh = boxes.copy()
    xywh[:, 2:] -= boxes[:, :2]
    classes = detections.classes.tolist()
    if classes and not 0 <= min(classes) <= max(classes) < len(dataset_ids):
        raise DatasetError(
            f"the model predicted class {max(classes)}, but the dataset has {len(dataset_ids)} classes "
            f"(indices 0..{len(dataset_ids) - 1}); is the model trained for this dataset?"
        )
    return [
        {"image_id": image_id, "category_id": dataset_ids[cls], "bbox": box, "score": score}
        for box, score, cls in zip(xywh.tolist(), detections.scores.tolist(), classes, strict=True)
    ]


def run_inference(
    predictor: ImagePredictor,
    dicts: Sequence[DatasetDict],
    metadata: DatasetMetadata,
    *,
    num_workers: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run ``predictor`` on every image (with a progress bar); return the COCO result entries."""
    results: list[dict[str, Any]] = []
    loader = build_test_loader(dicts, num_workers=num_workers)
    for (sample,) in tqdm(
        loader, total=len(dicts), desc=f"eval {metadata.name}", unit="img", disable=not progress
    ):
        detections = predictor(sample["image"])
        results.extend(detections_to_coco_results(detections, sample["image_id"], metadata.thing_dataset_ids))
    return results


def _coco_ground_truth(json_file: str | os.PathLike[str]) -> Any:
    """A pycocotools ``COCO`` of the json, with ``area`` and ``iscrowd`` filled in where missing."""
    from pycocotools.coco import COCO

    data = read_coco_json(json_file)
    if not data.get("annotations"):
        raise DatasetError(f"{json_file} has no annotations to evaluate against")
    for anno in data["annotations"]:
        anno.setdefault("iscrowd", 0)
        anno.setdefault("area", float(anno["bbox"][2] * anno["bbox"][3]))
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_evaluate(
    coco_results: list[dict[str, Any]], json_file: str | os.PathLike[str], class_names: Sequence[str]
) -> CocoEvalResult:
    """Box AP of ``coco_results`` against the annotations in ``json_file`` (all of its images).

    Args:
        coco_results: entries with ``image_id``, ``category_id`` (dataset id), ``bbox``
            [x, y, w, h] and ``score``.
        json_file: the ground truth.
        class_names: names of the classes, in sorted category-id order, for per-class AP.
    """
    from pycocotools.cocoeval import COCOeval

    if not coco_results:
        logger.warning("no detections to evaluate: every metric is NaN")
        return CocoEvalResult({m: math.nan for m in COCO_METRICS}, "", 0)
    coco_gt = _coco_ground_truth(json_file)
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        coco_dt = coco_gt.loadRes(coco_results)
        coco_eval = COCOeval(coco_gt, coco_dt, "bbox")
        coco_eval.params.maxDets = [1, 10, 100]
        coco_eval.evaluate()
        coco_eval.accumulate()
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        coco_eval.summarize()
    metrics = {
        name: float(coco_eval.stats[i] * 100) if coco_eval.stats[i] >= 0 else math.nan
        for i, name in enumerate(COCO_METRICS)
    }
    # precision: [IoU thresholds, recall points, classes, area ranges, max detections]
    precision = coco_eval.eval["precision"]
    if len(class_names) == precision.shape[2]:
        for index, name in enumerate(class_names):
            values = precision[:, :, index, 0, -1]
            values = values[values > -1]
            metrics[f"AP-{name}"] = float(np.mean(values) * 100) if values.size else math.nan
    return CocoEvalResult(metrics, table.getvalue().rstrip("\n"), len(coco_results))


def evaluate_on_dataset(
    predictor: ImagePredictor,
    dataset_name: str,
    catalog: DatasetCatalog,
    output_dir: str | os.PathLike[str],
    *,
    num_workers: int = 0,
    progress: bool = True,
) -> CocoEvalResult:
    """Predict every image of ``dataset_name``, evaluate, and write the two files.

    Writes ``output_dir/coco_instances_results.json`` (the detections, COCO result format) and
    ``output_dir/coco_eval.json`` (the metrics, see the module docstring), and logs the table.

    Raises:
        DatasetError: unknown dataset, missing files, or a dataset without annotations.
    """
    dicts, metadata = catalog.load(dataset_name)
    if not dicts:
        raise DatasetError(f"dataset {dataset_name!r} has no images")
    results = run_inference(predictor, dicts, metadata, num_workers=num_workers, progress=progress)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_FILE).write_text(json.dumps(results), encoding="utf-8")
    logger.info("wrote %d detections to %s", len(results), out / RESULTS_FILE)
    result = coco_evaluate(results, metadata.json_file, metadata.thing_classes)
    (out / METRICS_FILE).write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    logger.info(
        "%s box AP: %s",
        dataset_name,
        ", ".join(f"{m} {result.metrics[m]:.2f}" for m in COCO_METRICS),
    )
    return result


def evaluate_test_datasets(
    predictor: ImagePredictor,
    cfg: Any,
    catalog: DatasetCatalog,
    *,
    output_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> dict[str, CocoEvalResult]:
    """Evaluate on each dataset of ``DATASETS.TEST``, as Detectron2 evaluates each separately.

    Files go to ``output_dir`` (default ``OUTPUT_DIR``) for a single test dataset, and to
    ``output_dir/<dataset name>/`` for several. Images are decoded by
    ``DATALOADER.NUM_WORKERS`` workers.

    Raises:
        DatasetError: ``DATASETS.TEST`` is empty, or one of its datasets cannot be evaluated.
    """
    names = list(cfg.DATASETS.TEST)
    if not names:
        raise DatasetError("DATASETS.TEST is empty: name the dataset(s) to evaluate on")
    root = Path(output_dir if output_dir is not None else cfg.OUTPUT_DIR)
    return evaluate_datasets(
        predictor, names, catalog, root, num_workers=int(cfg.DATALOADER.NUM_WORKERS), progress=progress
    )


def evaluate_datasets(
    predictor: ImagePredictor,
    names: Sequence[str],
    catalog: DatasetCatalog,
    output_dir: str | os.PathLike[str],
    *,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, CocoEvalResult]:
    """Evaluate on each named dataset separately; files go to ``output_dir`` for one dataset and
    to ``output_dir/<dataset name>/`` for several.

    Raises:
        DatasetError: no dataset named, or one of them cannot be evaluated.
    """
    if not names:
        raise DatasetError("no dataset to evaluate on")
    root = Path(output_dir)
    return {
        name: evaluate_on_dataset(
            predictor,
            name,
            catalog,
            root if len(names) == 1 else root / name,
            num_workers=num_workers,
            progress=progress,
        )
        for name in names
    }


def format_metrics_table(metrics: dict[str, float]) -> str:
    """The six headline numbers as a small Markdown table (Detectron2 logs the same)."""
    header = "|" + "|".join(f"{name:^8}" for name in COCO_METRICS) + "|"
    rule = "|" + "|".join(":" + "-" * 6 + ":" for _ in COCO_METRICS) + "|"
    row = "|" + "|".join(f"{metrics.get(name, math.nan):^8.3f}" for name in COCO_METRICS) + "|"
    return "\n".join([header, rule, row])
