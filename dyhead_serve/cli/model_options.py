"""The model arguments every command shares: ``--model``, ``--config``, ``--weights``,
``--set KEY VALUE`` and (for ``train`` and ``eval``) trailing Detectron2-style ``KEY VALUE``
overrides; the runtime's ``--backend``, ``--device`` and ``--threads``; and the one function that
turns them into :class:`~dyhead_serve.runtime.options.ModelOptions`. Defined once here for
``dyhead-serve`` and ``dyhead-export``."""

from __future__ import annotations

import argparse

from dyhead_serve.model_source import ModelSource, resolve_model
from dyhead_serve.runtime.options import BACKEND_HELP, BACKENDS, DEVICE_HELP, ModelOptions

__all__ = [
    "add_device_argument",
    "add_model_arguments",
    "add_override_arguments",
    "add_runtime_arguments",
    "model_options_from_args",
    "model_source_from_args",
    "overrides_from_args",
]

_DEFAULTS = ModelOptions()

CONFIG_HELP = (
    "a config: a Detectron2 DyHead YAML file, an mmdetection DyHead config (.py, read without executing "
    "it, its _base_ files beside it, or a resolved Config.dump), or a shipped config name (official: "
    "dyhead_r50_atss_fpn_1x, dyhead_r50_retina_fpn_1x, dyhead_r50_rcnn_fpn_1x, dyhead_swint_atss_fpn_2x_ms; "
    "mmdetection: atss_r50-caffe_fpn_dyhead_1x_coco, atss_r50_fpn_dyhead_1x_coco, "
    "atss_swin-l-p4-w12_fpn_dyhead_ms-2x_coco); needs --weights"
)
WEIGHTS_HELP = (
    "checkpoint for --config, or a local copy of a zoo model's weights: a .pth (Detectron2's "
    "{'model': ...}, mmdetection's {'state_dict': ..., 'meta': ...} or a bare state dict), a Detectron2 "
    ".pkl or a .safetensors file, read without executing pickled code"
)


def _model_help(exported: bool, default: bool) -> str:
    text = "a zoo name (see `dyhead-serve zoo list`)"
    if exported:
        text += " or a folder written by `dyhead-export` (model.json + model.onnx/model.plan)"
    if default:
        text += "; default: the embedded demo model (six synthetic shapes)"
    return text


def add_override_arguments(parser: argparse.ArgumentParser, *, trailing: bool = False) -> None:
    """``--set KEY VALUE`` (repeatable) and, with ``trailing``, ``KEY VALUE`` pairs after every
    option, as Detectron2's tools take them."""
    parser.add_argument(
        "--set",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="override a config key, Detectron2 style (e.g. --set TEST.DETECTIONS_PER_IMAGE 50); repeatable",
    )
    if trailing:
        parser.add_argument(
            "opts",
            nargs=argparse.REMAINDER,
            metavar="KEY VALUE",
            help="more config overrides after every option, Detectron2 style: e.g. SOLVER.BASE_LR 0.005 "
            "OUTPUT_DIR out/run1",
        )


def add_model_arguments(
    parser: argparse.ArgumentParser,
    *,
    exported: bool = True,
    default: bool = True,
    required: bool = False,
    trailing_overrides: bool = False,
) -> argparse._MutuallyExclusiveGroup:
    """Add ``--model`` | ``--config``, ``--weights`` and the overrides to ``parser``.

    Args:
        exported: ``--model`` also takes a folder written by ``dyhead-export``.
        default: with neither ``--model`` nor ``--config``, the embedded default model.
        required: one of ``--model``/``--config`` (or what the caller adds to the returned
            group) must be given.
        trailing_overrides: also take ``KEY VALUE`` pairs after every option.

    Returns:
        the mutually exclusive group of the model sources, for a command with one more
        (``dyhead-export tensorrt --onnx``).
    """
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--model", default=None, help=_model_help(exported, default))
    group.add_argument("--config", default=None, help=CONFIG_HELP)
    parser.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    add_override_arguments(parser, trailing=trailing_overrides)
    return group


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """``--set`` pairs then trailing pairs, flattened to ``[KEY, VALUE, KEY, VALUE, ...]``."""
    flat = [str(item) for pair in getattr(args, "set", []) for item in pair]
    return flat + [str(item) for item in getattr(args, "opts", None) or []]


def model_source_from_args(
    args: argparse.Namespace, *, exported: bool = True, default: bool = True
) -> ModelSource:
    """Resolve the model arguments added by :func:`add_model_arguments` (see
    :func:`dyhead_serve.model_source.resolve_model` for the rules and errors)."""
    return resolve_model(
        args.model,
        config=args.config,
        weights=args.weights,
        overrides=overrides_from_args(args),
        exported_ok=exported,
        default_ok=default,
    )


def add_device_argument(parser: argparse.ArgumentParser, *, default: str | None = _DEFAULTS.device) -> None:
    """``--device`` (``default`` None: unset, so that another source, the server's settings, decides;
    its default is the same)."""
    parser.add_argument("--device", default=default, help=f"{DEVICE_HELP}; default {_DEFAULTS.device}")


def add_runtime_arguments(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """``--backend``, ``--device`` and ``--threads``: where the model runs.

    Args:
        defaults: the defaults of :class:`ModelOptions`; False leaves unset flags None (the
            server's settings then read the environment).
    """
    parser.add_argument(
        "--backend",
        default=_DEFAULTS.backend if defaults else None,
        choices=BACKENDS,
        help=f"{BACKEND_HELP} (default {_DEFAULTS.backend})",
    )
    add_device_argument(parser, default=_DEFAULTS.device if defaults else None)
    parser.add_argument(
        "--threads",
        type=int,
        default=_DEFAULTS.threads if defaults else None,
        help=f"ONNX Runtime intra-op threads (0: its default; default {_DEFAULTS.threads})",
    )


def model_options_from_args(args: argparse.Namespace) -> ModelOptions:
    """The :class:`ModelOptions` of the arguments added by :func:`add_model_arguments` and
    :func:`add_runtime_arguments`."""
    return ModelOptions(
        model=args.model,
        config=args.config,
        weights=args.weights,
        overrides=tuple(overrides_from_args(args)),
        backend=args.backend,
        device=args.device,
        threads=args.threads,
    )
