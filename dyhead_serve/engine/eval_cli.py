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

from dyhead_serve.engine.dataset_args import add_register_coco_argument, catalog_from_args

__all__ = ["add_eval_arguments", "run_eval"]

logger = logging.getLogger(__name__)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, ``--weights``, ``--device``, ``--no-progress``, ``--register-coco`` and
    the trailing ``KEY VALUE`` overrides to ``parser``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--config",
        help="a Detectron2 DyHead YAML file or a shipped config name; DATASETS.TEST names the datasets",
    )
    source.add_argument(
        "--model",
        help="a zoo name instead of --config/--weights (e.g. `default`: the embedded model on the "
        "generated shapes validation split)",
    )
    parser.add_argument(
        "--weights",
        help="checkpoint: .pth (with or without 'model') or Detectron2 .pkl; required with --config",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available; default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_register_coco_argument(parser)
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help="config overrides, Detectron2 style, after every option: e.g. DATASETS.TEST "
        "\"('my_val',)\" OUTPUT_DIR out/eval",
    )


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate ``args.weights`` on each of ``DATASETS.TEST``; print the tables to stdout.

    Writes ``OUTPUT_DIR/coco_instances_results.json`` and ``OUTPUT_DIR/coco_eval.json`` (one
    subfolder per dataset when there are several). Returns 0, or 2 after printing ``error: ...``
    to stderr for a bad config, checkpoint, device or dataset.
    """
    from dyhead_serve.checkpoint import CheckpointError
    from dyhead_serve.config import load_config
    from dyhead_serve.data.coco_json import DatasetError
    from dyhead_serve.engine.evaluation import evaluate_test_datasets, format_metrics_table
    from dyhead_serve.predict import build_torch_predictor
    from dyhead_serve.runtime.base import BackendError
    from dyhead_serve.runtime.loader import resolve_torch_device
    from dyhead_serve.zoo import ZooError, get_model, weights_path

    try:
        catalog = catalog_from_args(args)
        device = resolve_torch_device(args.device)
        config, weights = args.config, args.weights
        if args.model is not None:
            entry = get_model(args.model)
            config = entry.config_path
            weights = weights or weights_path(entry)
        elif weights is None:
            raise ValueError("--config needs --weights (the checkpoint to evaluate)")
        cfg = load_config(config, overrides=[*args.opts, "MODEL.DEVICE", device])
        for name in cfg.DATASETS.TEST:
            catalog.get(name)  # an unknown name fails before the model is built
        predictor = build_torch_predictor(cfg, weights)
        results = evaluate_test_datasets(predictor, cfg, catalog, progress=not args.no_progress)
    except (ValueError, CheckpointError, BackendError, FileNotFoundError, DatasetError, ZooError) as exc:
        print(f"error: {str(exc).strip()}", file=sys.stderr)
        return 2
    for name, result in results.items():
        print(f"== {name}: COCO box AP, {result.num_detections} detections")
        if result.table:
            print(result.table)
        print(format_metrics_table(result.metrics))
    return 0
