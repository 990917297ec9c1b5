"""``dyhead-serve eval``: COCO box AP of a checkpoint on the config's test datasets.

Wired into :mod:`dyhead_serve.cli` with::

    p = subparsers.add_parser("eval", help=..., description=...)
    add_eval_arguments(p)
    p.set_defaults(func=run_eval)
"""

from __future__ import annotations

import argparse
import logging
import sys

from dyhead_serve.model_args import add_model_arguments, model_source_from_args
from dyhead_serve.training.dataset_args import add_register_coco_argument, catalog_from_args

__all__ = ["add_eval_arguments", "run_eval"]

logger = logging.getLogger(__name__)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the model arguments (``--model`` | ``--config`` + ``--weights``, overrides with
    ``--set`` or trailing ``KEY VALUE``), ``--device``, ``--no-progress`` and ``--register-coco``
    to ``parser``. The config's DATASETS.TEST names the datasets."""
    add_model_arguments(parser, exported=False, default=False, required=True, trailing_overrides=True)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available; default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_register_coco_argument(parser)


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate ``args.weights`` on each of ``DATASETS.TEST``; print the tables to stdout.

    Writes ``OUTPUT_DIR/coco_instances_results.json`` and ``OUTPUT_DIR/coco_eval.json`` (one
    subfolder per dataset when there are several). Returns 0, or 2 after printing ``error: ...``
    to stderr for a bad config, checkpoint, device or dataset.
    """
    from dyhead_serve.checkpoint import CheckpointError
    from dyhead_serve.config import load_config
    from dyhead_serve.data.coco_json import DatasetError
    from dyhead_serve.predict import build_torch_predictor
    from dyhead_serve.runtime.base import BackendError
    from dyhead_serve.runtime.loader import resolve_torch_device
    from dyhead_serve.training.evaluation import evaluate_test_datasets, format_metrics_table
    from dyhead_serve.zoo import ZooError

    try:
        catalog = catalog_from_args(args)
        device = resolve_torch_device(args.device)
        source = model_source_from_args(args, exported=False, default=False)
        weights = source.weights
        assert source.config is not None
        cfg = load_config(source.config, overrides=[*source.overrides, "MODEL.DEVICE", device])
        for name in cfg.DATASETS.TEST:
            catalog.get(name)  # an unknown name fails before the model is built
        predictor = build_torch_predictor(cfg, weights)
        results = evaluate_test_datasets(
            predictor,
            cfg.DATASETS.TEST,
            catalog,
            cfg.OUTPUT_DIR,
            num_workers=int(cfg.DATALOADER.NUM_WORKERS),
            progress=not args.no_progress,
        )
    except (ValueError, CheckpointError, BackendError, FileNotFoundError, DatasetError, ZooError) as exc:
        print(f"error: {str(exc).strip()}", file=sys.stderr)
        return 2
    for name, result in results.items():
        print(f"== {name}: COCO box AP, {result.num_detections} detections")
        if result.table:
            print(result.table)
        print(format_metrics_table(result.metrics))
    return 0
