"""``dyhead-serve predict``: detect objects in image files and print JSON."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from dyhead_serve.cli.model_options import add_model_arguments, add_runtime_arguments, model_options_from_args
from dyhead_serve.errors import UserError
from dyhead_serve.pipeline.draw_threshold import DRAW_THRESHOLD

__all__ = ["add_predict_parser"]

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


def add_predict_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``predict`` subcommand."""
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
    add_model_arguments(p, exported=True, default=True)
    add_runtime_arguments(p)
    p.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help="minimum score of a returned detection; the model's own candidate threshold (0.05 for the "
        "official ones) applies first either way, so this only drops detections (default: none dropped)",
    )
    p.add_argument(
        "--out-dir", type=Path, default=None, help="also write each image with its boxes drawn here"
    )
    p.add_argument(
        "--draw-threshold",
        type=float,
        default=DRAW_THRESHOLD,
        help=f"with --out-dir, draw only detections scoring at least this (default {DRAW_THRESHOLD}; "
        "the JSON keeps all above --score-threshold)",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    p.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    """Print the detections of every image; 1 when some image could not be read."""
    from dyhead_serve.predict import check_out_dir, draw_files, predict_files
    from dyhead_serve.runtime.base import make_predictor
    from dyhead_serve.runtime.loader import load_backend

    if args.score_threshold is not None and not 0.0 <= args.score_threshold < 1.0:
        raise UserError(f"--score-threshold must be in [0, 1), got {args.score_threshold}")
    if not 0.0 <= args.draw_threshold <= 1.0:
        raise UserError(f"--draw-threshold must be in [0, 1], got {args.draw_threshold}")
    if args.out_dir is not None:
        check_out_dir(args.out_dir)
    if args.model is None and args.config is None:
        from dyhead_serve.zoo import demo_model_notice

        logger.info("no model named: %s", demo_model_notice())
    predictor = make_predictor(load_backend(model_options_from_args(args)))
    # An OutputShapeError (the model, not an image, is at fault) stops at the first image.
    results, detections, errors = predict_files(predictor, args.images, score_threshold=args.score_threshold)
    # The results first: drawing writes files, and a full disk must not lose them.
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.stdout.flush()
    if args.out_dir is not None:
        errors += draw_files(results, detections, args.out_dir, args.draw_threshold)
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    return 1 if errors else 0
