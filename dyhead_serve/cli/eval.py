"""``dyhead-serve eval``: COCO box AP of a checkpoint on the config's test datasets."""

from __future__ import annotations

import argparse
import logging

from dyhead_serve.cli.dataset_args import add_register_coco_argument, catalog_from_args
from dyhead_serve.cli.model_options import add_device_argument, add_model_arguments, model_source_from_args
from dyhead_serve.errors import UserError

__all__ = ["add_eval_arguments", "add_eval_parser", "run_eval"]

logger = logging.getLogger(__name__)


def add_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand."""
    p = subparsers.add_parser(
        "eval",
        help="COCO box AP of a checkpoint on the config's test datasets",
        description="Run the detector on every image of DATASETS.TEST, print the COCO box-AP table and "
        "write OUTPUT_DIR/coco_eval.json (AP, AP50, AP75, APs, APm, APl in percent) and the raw "
        "detections beside it.",
    )
    add_eval_arguments(p)
    p.set_defaults(func=run_eval)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the model arguments (``--model`` | ``--config`` + ``--weights``, overrides with
    ``--set`` or trailing ``KEY VALUE``), ``--device``, ``--no-progress`` and ``--register-coco``
    to ``parser``. The config's DATASETS.TEST names the datasets."""
    add_model_arguments(parser, exported=False, default=False, required=True, trailing_overrides=True)
    add_device_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_register_coco_argument(parser)


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate ``args.weights`` on each of ``DATASETS.TEST``; print the tables to stdout.

    Writes ``OUTPUT_DIR/coco_instances_results.json`` and ``OUTPUT_DIR/coco_eval.json`` (one
    subfolder per dataset when there are several). Returns 0.

    Raises:
        UserError: a bad config, checkpoint, device or dataset; a value the model or the
            evaluation refuses (they check plain values with ``ValueError``) as a ConfigError.
    """
    from dyhead_serve.config import ConfigError, load_config
    from dyhead_serve.predict import build_torch_predictor
    from dyhead_serve.runtime.loader import resolve_torch_device
    from dyhead_serve.training.evaluation import evaluate_test_datasets, format_metrics_table

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
    except UserError:
        raise
    except ValueError as exc:  # a value the model or evaluation refuses, named in the config
        raise ConfigError(str(exc).strip()) from exc
    for name, result in results.items():
        print(f"== {name}: COCO box AP, {result.num_detections} detections")
        if result.table:
            print(result.table)
        print(format_metrics_table(result.metrics))
    return 0
