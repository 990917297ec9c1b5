"""``dyhead-serve``: run DyHead detectors from the command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]

logger = logging.getLogger("dyhead_serve")

EPILOG = """\
examples:
  dyhead-serve predict --config dyhead_r50_atss_fpn_1x --weights dyhead_r50_atss_fpn_1x.pth photo.jpg
  dyhead-serve predict --config my.yaml --weights model.pth --out-dir drawn/ --score-threshold 0.3 a.jpg b.png
"""


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


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
    p.add_argument(
        "--config",
        required=True,
        help="a Detectron2 DyHead YAML file, or the name of a shipped official config "
        "(dyhead_r50_atss_fpn_1x, dyhead_r50_retina_fpn_1x, ...)",
    )
    p.add_argument(
        "--weights", required=True, help="checkpoint: official .pth (with or without 'model') or .pkl"
    )
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available; default)")
    p.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help="minimum score of a detection (default: the config's test threshold, 0.05)",
    )
    p.add_argument(
        "--out-dir", type=Path, default=None, help="also write each image with its boxes drawn here"
    )
    p.add_argument(
        "--set",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="override a config key, Detectron2 style (e.g. --set TEST.DETECTIONS_PER_IMAGE 50); repeatable",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    p.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from dyhead_serve.checkpoint import CheckpointError
    from dyhead_serve.config import ConfigError, load_config
    from dyhead_serve.predict import build_torch_predictor, predict_files, resolve_device

    if args.score_threshold is not None and not 0.0 <= args.score_threshold < 1.0:
        raise CliError(f"--score-threshold must be in [0, 1), got {args.score_threshold}")
    overrides = [item for pair in args.set for item in pair]
    try:
        device = resolve_device(args.device)
        cfg = load_config(args.config, overrides=[*overrides, "MODEL.DEVICE", device])
        predictor = build_torch_predictor(cfg, args.weights, device)
    except (ConfigError, CheckpointError, ValueError, RuntimeError, FileNotFoundError) as exc:
        raise CliError(str(exc).strip()) from exc
    results, errors = predict_files(
        predictor, args.images, score_threshold=args.score_threshold, out_dir=args.out_dir
    )
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    return 1 if errors else 0


def build_parser() -> argparse.ArgumentParser:
    """The ``dyhead-serve`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="dyhead-serve",
        description="DyHead object detectors: predict on images (more commands arrive with training, "
        "export and serving).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_predict(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dyhead-serve`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
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


if __name__ == "__main__":
    sys.exit(main())
