"""``dyhead-serve``: run DyHead detectors from the command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dyhead_serve.runtime.base import Backend

__all__ = ["build_parser", "main"]

logger = logging.getLogger("dyhead_serve")

EPILOG = """\
examples:
  dyhead-serve predict --config dyhead_r50_atss_fpn_1x --weights dyhead_r50_atss_fpn_1x.pth photo.jpg
  dyhead-serve predict --model dyhead_r50_atss_fpn_1x photo.jpg          # downloads the official weights
  dyhead-serve predict --model exported/ --backend onnxruntime photo.jpg  # a `dyhead-export onnx` folder
  dyhead-serve predict --config my.yaml --weights model.pth --out-dir drawn/ --score-threshold 0.3 a.jpg b.png
  dyhead-serve predict --model atss_r50_fpn_dyhead_1x_coco photo.jpg     # mmdetection's model zoo
  dyhead-serve predict --config my_mmdet_config.py --weights epoch_12.pth photo.jpg  # your mmdetection model
"""


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def installed_command(script: str, module: str) -> list[str]:
    """The command line that runs console script ``script`` of this installation.

    The script installed beside this interpreter (the same environment, whatever ``PATH`` says);
    where there is none (a source tree on ``PYTHONPATH``), ``python -m module`` with this
    interpreter. ``module`` is a namespaced module, so a folder of the working directory with a
    generic name can never shadow it.
    """
    scripts = Path(sysconfig.get_path("scripts"))
    for candidate in (scripts / script, Path(sys.executable).parent / script):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return [str(candidate)]
    return [sys.executable, "-m", module]


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The model arguments (shared with every command) and the runtime's: --backend, --device,
    --threads. Used by predict and serve."""
    from dyhead_serve.model_args import add_model_arguments

    add_model_arguments(p, exported=True, default=True)
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "onnxruntime", "tensorrt"],
        help="auto: TensorRT for an engine on a GPU host, ONNX Runtime for model.onnx, torch for configs",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available; default)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")


def _load_backend_from_args(args: argparse.Namespace) -> Backend:
    from dyhead_serve.checkpoint import CheckpointError
    from dyhead_serve.config import ConfigError
    from dyhead_serve.model_args import overrides_from_args
    from dyhead_serve.runtime.base import BackendError
    from dyhead_serve.runtime.loader import load_backend
    from dyhead_serve.zoo import ZooError

    try:
        return load_backend(
            args.model,
            config=args.config,
            weights=args.weights,
            backend=args.backend,
            device=args.device,
            overrides=overrides_from_args(args),
            threads=args.threads,
        )
    except (ConfigError, CheckpointError, BackendError, ZooError, ValueError, FileNotFoundError) as exc:
        raise CliError(str(exc).strip()) from exc


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="detect objects in images and print JSON",
        description=(
            "Detect objects in image files and print one JSON document to stdout: a list with, per "
            "image, file, width, height and detections ({box: [x1, y1, x2, y2], score, class_id, "
            "label}, boxes in original image pixels). Images that cannot be read are reported on "
            "stderr; the others are still processed and the exit status is 1."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    _add_model_arguments(p)
    p.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help="minimum score of a detection (default: the model's test threshold, 0.05 for the official ones)",
    )
    p.add_argument(
        "--out-dir", type=Path, default=None, help="also write each image with its boxes drawn here"
    )
    p.add_argument(
        "--draw-threshold",
        type=float,
        default=0.3,
        help="with --out-dir, draw only detections scoring at least this (default 0.3; the JSON "
        "keeps all above --score-threshold)",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    p.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from dyhead_serve.decode.raw_outputs import OutputShapeError
    from dyhead_serve.predict import predict_files
    from dyhead_serve.runtime.base import make_predictor

    if args.score_threshold is not None and not 0.0 <= args.score_threshold < 1.0:
        raise CliError(f"--score-threshold must be in [0, 1), got {args.score_threshold}")
    if not 0.0 <= args.draw_threshold <= 1.0:
        raise CliError(f"--draw-threshold must be in [0, 1], got {args.draw_threshold}")
    if args.model is None and args.config is None:
        from dyhead_serve.zoo import demo_model_notice

        logger.info("no model named: %s", demo_model_notice())
    predictor = make_predictor(_load_backend_from_args(args))
    try:
        results, errors = predict_files(
            predictor,
            args.images,
            score_threshold=args.score_threshold,
            out_dir=args.out_dir,
            draw_threshold=args.draw_threshold,
        )
    except OutputShapeError as exc:  # the model, not an image, is at fault: stop at the first
        raise CliError(str(exc)) from exc
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    return 1 if errors else 0


def _add_zoo(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "zoo", help="list the named models", description="Named models usable with --model."
    )
    zoo_commands = p.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND", required=True)
    listing = zoo_commands.add_parser(
        "list", help="list the named models and whether their weights are cached"
    )
    listing.set_defaults(func=_run_zoo_list)


def _run_zoo_list(args: argparse.Namespace) -> int:
    from dyhead_serve import zoo

    width = max(len(name) for name in zoo.ZOO)
    print(f"{'name':{width}s} {'COCO AP':>7s}  {'cached':6s}  description / weights URL")
    for entry in zoo.ZOO.values():
        cached = entry.embedded is not None or (zoo.cache_dir() / "weights" / Path(entry.url).name).is_file()
        ap = f"{entry.coco_ap:.1f}" if entry.coco_ap is not None else "-"
        print(f"{entry.name:{width}s} {ap:>7s}  {'yes' if cached else 'no':6s}  {entry.description}")
        print(f"{'':{width + 18}s}{entry.url or 'shipped in the package'}")
    print(f"\ncache: {zoo.cache_dir()} (set DYHEAD_SERVE_CACHE to move it)")
    return 0


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    from dyhead_serve.training.train_cli import add_train_arguments, run_train

    p = subparsers.add_parser(
        "train",
        help="train a detector from a Detectron2 DyHead config (one process, or torchrun for DDP)",
        description="Train the detector a config describes on DATASETS.TRAIN: Detectron2's optimizer "
        "groups and warmup multi-step schedule, checkpoints in OUTPUT_DIR (--resume continues), one "
        "JSON line per iteration in OUTPUT_DIR/metrics.jsonl, evaluation every TEST.EVAL_PERIOD. "
        "Several GPUs: torchrun --standalone --nproc_per_node=N -m dyhead_serve.cli train ... --num-gpus N",
    )
    add_train_arguments(p)
    p.set_defaults(func=run_train)


def _add_eval(subparsers: argparse._SubParsersAction) -> None:
    from dyhead_serve.training.eval_cli import add_eval_arguments, run_eval

    p = subparsers.add_parser(
        "eval",
        help="COCO box AP of a checkpoint on the config's test datasets",
        description="Run the detector on every image of DATASETS.TEST, print the COCO box-AP table and "
        "write OUTPUT_DIR/coco_eval.json (AP, AP50, AP75, APs, APm, APl in percent) and the raw "
        "detections beside it.",
    )
    add_eval_arguments(p)
    p.set_defaults(func=run_eval)


def _add_serve(subparsers: argparse._SubParsersAction) -> None:
    from dyhead_serve.server.serve_cli import SERVE_EPILOG, add_serve_arguments, run_serve

    p = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP (REST API, Open Inference Protocol v2, demo page)",
        description="Serve a detector over HTTP with dynamic batching: POST /v1/detect, "
        "/v1/detect/annotated, /v2 (KServe/Triton), /healthz, /readyz, /metrics, a demo page at / "
        "and the API docs at /docs. With no model named, the embedded default on CPU.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=SERVE_EPILOG,
    )
    _add_model_arguments(p)
    add_serve_arguments(p)
    p.set_defaults(func=run_serve)


def build_parser() -> argparse.ArgumentParser:
    """The ``dyhead-serve`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="dyhead-serve",
        description="DyHead object detectors: predict on images, train, evaluate (COCO AP), list the "
        "model zoo and serve a model over HTTP. Export to ONNX and TensorRT is `dyhead-export`. "
        "Models: the official DynamicHead (Detectron2) configs and checkpoints, and mmdetection's "
        "DyHead models (its .py configs, read without executing them, and its checkpoints), with "
        "each implementation's own detections.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_predict(subparsers)
    _add_train(subparsers)
    _add_eval(subparsers)
    _add_zoo(subparsers)
    _add_serve(subparsers)
    return parser


def run_command(args: argparse.Namespace, level: int) -> int:
    """Set up logging to stderr and run ``args.func``: a :class:`CliError` becomes ``error: ...``
    and exit status 2, Ctrl-C exit status 130. Shared by ``dyhead-serve`` and ``dyhead-export``."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        return int(args.func(args))
    except CliError as exc:
        # One line, except a checkpoint mismatch, whose report lists the differing keys below it.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dyhead-serve`` console script."""
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    return run_command(args, level)


if __name__ == "__main__":
    sys.exit(main())
