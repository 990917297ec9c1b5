"""``dyhead-export engine``: the TensorRT engine of a model for this GPU, taken from the engine
cache or built once into it; prints the engine's folder (what the GPU image serves)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dyhead_serve.cli.model_options import add_model_arguments, overrides_from_args
from dyhead_serve.errors import UserError
from dyhead_serve.export.tensorrt_build import PROFILES
from dyhead_serve.runtime.options import PRECISIONS

__all__ = ["add_engine_parser", "server_batch_size"]

EPILOG = """\
examples:
  dyhead-export engine --model dyhead_r50_atss_fpn_1x                 # fp16, the server's batch size
  dyhead-export engine --config cfg.yaml --weights w.pth --precision fp32 --max-batch 1
  dyhead-export engine --model exported/atss --cache /var/lib/dyhead-serve/engines
  dyhead-serve serve --backend tensorrt --model "$(dyhead-export engine --model dyhead_r50_atss_fpn_1x)"

--model DIR (a `dyhead-export` folder): its model.plan is used as it is when it was built for
this GPU and TensorRT version; otherwise its model.onnx + model.json are built.
The first run for a model, TensorRT version, GPU, precision and profile builds the engine with
`dyhead-export tensorrt` (ONNX export, build, verification against PyTorch: minutes); later runs
find it in the cache at once. Standard output carries only the engine folder; progress and a
summary line naming the GPU, TensorRT version and model go to standard error.
"""


def add_engine_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``engine`` subcommand."""
    p = subparsers.add_parser(
        "engine",
        help="find or build (once, into a cache) the TensorRT engine of a model for this GPU",
        description="Print the folder of a TensorRT engine of the model for this machine's GPU and "
        "TensorRT version, building it first when the cache has none (keyed by model checksum, "
        "TensorRT version, GPU, precision and shape profile).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    add_model_arguments(p, exported=True, default=True)
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="engine cache folder (default: $DYHEAD_SERVE_CACHE/engines, else ~/.cache/dyhead-serve/engines)",
    )
    p.add_argument("--precision", choices=list(PRECISIONS), default="fp16", help="default fp16")
    p.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="most images the server puts in one batch (its --max-batch-size; default: the server's, "
        "DYHEAD_SERVE_MAX_BATCH_SIZE or its default): the engine's profile must take them",
    )
    p.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default=None,
        help="shape preset (default: the smallest COCO preset that takes --max-batch images)",
    )
    p.add_argument("--workspace", type=float, default=None, metavar="GB", help="builder workspace")
    p.set_defaults(func=_run_engine)


def server_batch_size() -> int:
    """The batch size ``dyhead-serve serve`` would use here: ``DYHEAD_SERVE_MAX_BATCH_SIZE``, else
    the server's default."""
    import importlib.util

    if importlib.util.find_spec("pydantic_settings") is None:
        from dyhead_serve.pipeline.preprocess import MissingExtraError

        raise MissingExtraError(
            "the server's batch size needs its settings: pass --max-batch, or "
            "pip install 'dyhead-serve[serve]'"
        )
    from pydantic import ValidationError

    from dyhead_serve.cli.serve import describe_validation_error
    from dyhead_serve.server.settings import ServerSettings

    try:
        return ServerSettings().max_batch_size
    except ValidationError as exc:
        raise UserError(
            f"invalid server settings in the environment: {describe_validation_error(exc)}"
        ) from None


def _run_engine(args: argparse.Namespace) -> int:
    from dyhead_serve.checkpoint.cache import cache_folder
    from dyhead_serve.export.engine_cache import (
        current_target,
        find_or_build,
        mounted_engine,
        profile_for_batch,
        resolve_source,
    )

    max_batch = args.max_batch if args.max_batch is not None else server_batch_size()
    if max_batch < 1:
        raise UserError(f"--max-batch must be at least 1, got {max_batch}")
    overrides = overrides_from_args(args)
    try:
        target = current_target(args.precision, profile_for_batch(max_batch, args.profile))
        mounted = None
        if args.model is not None and Path(args.model).is_dir():
            mounted = mounted_engine(Path(args.model), target, max_batch)
        if mounted is not None:
            result, precision = mounted
            summary = result.describe(args.model, target, precision)
        else:
            source = resolve_source(args.model, config=args.config, weights=args.weights, overrides=overrides)
            extra = ["--workspace", str(args.workspace)] if args.workspace else []
            root = args.cache if args.cache is not None else cache_folder("engines")
            result = find_or_build(source, target, root, extra_build_args=extra)
            summary = result.describe(f"{source.label} (id {source.model_id[:16]})", target)
    except PermissionError as exc:
        raise UserError(
            f"cannot write the engine cache ({exc}); make it writable for this user (uid {os.getuid()}; "
            "the images run as 10001)"
        ) from exc
    print(summary, file=sys.stderr)
    print(result.path)
    return 0
