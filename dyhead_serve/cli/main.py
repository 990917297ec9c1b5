"""``dyhead-serve``: run DyHead detectors from the command line (the parser and its dispatch)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from dyhead_serve.cli.eval import add_eval_parser
from dyhead_serve.cli.predict import add_predict_parser
from dyhead_serve.cli.run import run_command
from dyhead_serve.cli.serve import add_serve_parser
from dyhead_serve.cli.train import add_train_parser
from dyhead_serve.cli.version import add_version_argument
from dyhead_serve.cli.zoo import add_zoo_parser

__all__ = ["build_parser", "main"]


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
    add_version_argument(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_predict_parser(subparsers)
    add_train_parser(subparsers)
    add_eval_parser(subparsers)
    add_zoo_parser(subparsers)
    add_serve_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dyhead-serve`` console script."""
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    return run_command(args, level)


if __name__ == "__main__":
    sys.exit(main())
