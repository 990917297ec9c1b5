"""``dyhead-serve eval``: COCO box AP of a model on its config's test datasets: a checkpoint with
its config, a zoo model, or an exported folder (ONNX, float16 ONNX, TensorRT engine) in the
runtime that serves it."""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace

from dyhead_serve.cli.dataset_args import add_register_coco_argument, catalog_from_args
from dyhead_serve.cli.model_options import (
    add_model_arguments,
    add_runtime_arguments,
    model_options_from_args,
    overrides_from_args,
)
from dyhead_serve.errors import UserError

__all__ = ["add_eval_arguments", "add_eval_parser", "run_eval"]

logger = logging.getLogger(__name__)


def add_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand."""
    p = subparsers.add_parser(
        "eval",
        help="COCO box AP of a model on the config's test datasets",
        description="Run the detector on every image of DATASETS.TEST, print the COCO box-AP table and "
        "write OUTPUT_DIR/coco_eval.json (AP, AP50, AP75, APs, APm, APl in percent) and the raw "
        "detections beside it. --model DIR evaluates an exported folder in the runtime that would "
        "serve it (--backend: ONNX Runtime for model.onnx, float16 ones too; TensorRT for model.plan; "
        "torch for a folder exported with --external-weights); its config is the one recorded in "
        "model.json, and --set overrides reach only that config's DATASETS, DATALOADER and OUTPUT_DIR.",
    )
    add_eval_arguments(p)
    p.set_defaults(func=run_eval)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the model arguments (``--model`` | ``--config`` + ``--weights``, overrides with
    ``--set`` or trailing ``KEY VALUE``), ``--backend``/``--device``/``--threads``,
    ``--no-progress`` and ``--register-coco`` to ``parser``. The config's DATASETS.TEST names the
    datasets."""
    add_model_arguments(parser, exported=True, default=False, required=True, trailing_overrides=True)
    add_runtime_arguments(parser)
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
    from dyhead_serve.model_source import resolve_model
    from dyhead_serve.runtime.base import make_predictor
    from dyhead_serve.runtime.loader import exported_config, load_backend, resolve_torch_device
    from dyhead_serve.training.evaluation import evaluate_test_datasets, format_metrics_table

    try:
        catalog = catalog_from_args(args)
        options = model_options_from_args(args)
        overrides = overrides_from_args(args)
        source = resolve_model(options.model, config=options.config, weights=options.weights)
        if source.kind == "exported":
            assert source.folder is not None
            model_keys = [key for key in overrides[::2] if str(key).startswith("MODEL.")]
            if model_keys:
                raise ConfigError(
                    f"{source.folder} is an exported network: {', '.join(model_keys)} cannot change it "
                    "(export it again with the override); --set reaches only DATASETS, DATALOADER and "
                    "OUTPUT_DIR here"
                )
            config, recorded = exported_config(source.folder)
            cfg = load_config(config, overrides=[*recorded, *overrides])
            options = replace(options, overrides=())  # the network is fixed; the config's datasets are not
        else:
            assert source.config is not None
            device = resolve_torch_device(options.device)
            cfg = load_config(
                source.config, overrides=[*source.overrides, *overrides, "MODEL.DEVICE", device]
            )
        for name in cfg.DATASETS.TEST:
            catalog.get(name)  # an unknown name fails before the model is loaded
        predictor = make_predictor(load_backend(options))
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
