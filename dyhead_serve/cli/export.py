"""``dyhead-export``: turn trained DyHead weights into deployable artifacts."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from dyhead_serve.cli.export_engine import add_engine_parser
from dyhead_serve.cli.export_tensorrt import add_tensorrt_parser
from dyhead_serve.cli.model_options import add_model_arguments, model_source_from_args
from dyhead_serve.cli.run import run_command
from dyhead_serve.cli.version import add_version_argument
from dyhead_serve.export.onnx_export import DEFAULT_EXPORTER, EXPORTERS
from dyhead_serve.runtime.options import PRECISIONS

__all__ = ["build_parser", "main"]

logger = logging.getLogger("dyhead_serve.export")

ONNX_EPILOG = """\
examples:
  dyhead-export onnx --config dyhead_r50_atss_fpn_1x --weights dyhead_r50_atss_fpn_1x.pth --out exported/atss
  dyhead-export onnx --model dyhead_r50_retina_fpn_1x --out exported/retina --verify-image photo.jpg
  dyhead-export onnx --config cfg.yaml --weights w.pth --out exported/trt --dcn plugin --batch 1
  dyhead-export onnx --model atss_r50_fpn_dyhead_1x_coco --out exported/mmdet   # an mmdetection model
  dyhead-export onnx --config my_mmdet_config.py --weights epoch_12.pth --out exported/mine

The folder then holds model.onnx and model.json (preprocessing, class names, decoder, provenance);
serve or predict with `--model exported/atss`.
"""


def _batch(value: str) -> int | None:
    if value == "dynamic":
        return None
    try:
        batch = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch must be an integer or 'dynamic', got {value!r}") from None
    if batch < 1:
        raise argparse.ArgumentTypeError(f"--batch must be at least 1, got {batch}")
    return batch


def _add_onnx(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "onnx",
        help="export to ONNX (model.onnx + model.json) and verify it in ONNX Runtime",
        description=(
            "Export a detector's network (normalised, padded images in; raw head outputs out) to "
            "ONNX with dynamic batch, height and width, check it with onnx.checker and shape "
            "inference, then run it in ONNX Runtime on an image and compare raw outputs and final "
            "detections with PyTorch; a difference beyond tolerance fails the export (exit 1)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=ONNX_EPILOG,
    )
    add_model_arguments(p, exported=False, default=False, required=True)
    p.add_argument("--out", required=True, type=Path, help="output folder for model.onnx and model.json")
    p.add_argument("--opset", type=int, default=19, help="ONNX opset, >= 19 (DeformConv); default 19")
    p.add_argument(
        "--batch",
        type=_batch,
        default=None,
        metavar="B|dynamic",
        help="fixed batch size, or 'dynamic' (default)",
    )
    p.add_argument(
        "--dcn",
        choices=["onnx", "plugin"],
        default="onnx",
        help="deformable convs as ONNX DeformConv (default; ONNX Runtime, TensorRT builtin) or as "
        "nodes of our TensorRT plugin dyhead::ModulatedDeformConv2d (TensorRT only)",
    )
    p.add_argument(
        "--exporter",
        choices=list(EXPORTERS),
        default=DEFAULT_EXPORTER,
        help=f"torch's ONNX exporter (default {DEFAULT_EXPORTER}): {EXPORTERS[0]} (torch.onnx.export("
        f"dynamo=False), deprecated since PyTorch 2.9, works for every model) or {EXPORTERS[1]} "
        "(torch.export + ONNX Script: a smaller graph, about 15x slower to export, checked at the sizes "
        "torch.export assumed away; not for Faster R-CNN, not with --external-weights). "
        "dyhead-export tensorrt/engine always use torchscript",
    )
    p.add_argument(
        "--verify-image",
        type=Path,
        default=None,
        help="image for the built-in verification (default: a generated photograph-like image)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime comparison")
    p.add_argument(
        "--external-weights",
        action="store_true",
        help="also write the weights as OUT/model.safetensors, read by model.onnx (ONNX external data) "
        "and by PyTorch (--weights): one copy of the weights for both",
    )
    p.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="fp32",
        help="fp32 (default), or fp16: a mixed-precision graph (convolutions, matrix products and "
        "deformable convs with float16 weights; normalisations, softmax, exp and the rest that loses "
        "accuracy in float16 kept float32; float32 inputs and outputs), verified at float16 "
        "tolerances. What TensorRT >= 10.12 builds fp16 engines from",
    )
    p.set_defaults(func=_run_onnx)


def _run_onnx(args: argparse.Namespace) -> int:
    import tempfile

    from tqdm import tqdm

    from dyhead_serve.data.sample_image import synthetic_photo
    from dyhead_serve.export.onnx_export import export_onnx
    from dyhead_serve.export.verify import compare_backends, tolerances_for
    from dyhead_serve.pipeline.image_io import read_image
    from dyhead_serve.runtime.loader import load_torch_backend_from

    # loading, tracing, checking (+ weights file, + float16 conversion), verifying
    total = 3 + (0 if args.no_verify else 1) + int(args.external_weights) + int(args.precision == "fp16")
    steps = tqdm(total=total, desc="export", unit="step", file=sys.stderr)
    try:
        steps.set_postfix_str("loading weights")
        source = model_source_from_args(args, exported=False, default=False)
        image = read_image(args.verify_image) if args.verify_image else synthetic_photo(480, 640)
        backend = load_torch_backend_from(source, device="cpu")
        steps.update()
        provenance = source.provenance()

        def on_step(text: str) -> None:
            steps.set_postfix_str(text)
            steps.update()

        export_onnx(
            backend,
            args.out,
            opset=args.opset,
            batch=args.batch,
            dcn=args.dcn,
            exporter=args.exporter,
            provenance=provenance,
            on_step=on_step,
            external_weights=args.external_weights,
            precision=args.precision,
        )
        if args.no_verify:
            steps.close()  # before the line below, so that the bar does not overwrite it
            print(f"wrote {args.out / 'model.onnx'} (not verified: --no-verify)")
            return 0
        steps.set_postfix_str("verifying in ONNX Runtime")
        from dyhead_serve.runtime.onnxruntime_backend import OnnxRuntimeBackend

        tolerances = tolerances_for(args.precision)

        if args.dcn == "plugin":
            # ONNX Runtime cannot run our TensorRT plugin: verify the same network with DeformConv.
            with tempfile.TemporaryDirectory() as twin:
                export_onnx(
                    backend,
                    twin,
                    opset=args.opset,
                    batch=args.batch,
                    dcn="onnx",
                    exporter=args.exporter,
                    precision=args.precision,
                )
                report = compare_backends(backend, OnnxRuntimeBackend(twin, device="cpu"), image, tolerances)
        else:
            report = compare_backends(backend, OnnxRuntimeBackend(args.out, device="cpu"), image, tolerances)
        steps.update()
    finally:
        steps.close()
    what = "DeformConv twin of the plugin graph" if args.dcn == "plugin" else "model.onnx"
    print(f"verification ({what}, {args.precision}, in ONNX Runtime vs PyTorch, one image):")
    print(report.format())
    if not report.ok:
        print(f"error: the export differs from PyTorch beyond tolerance; {args.out} is not to be trusted")
        return 1
    print(f"ok: wrote {args.out / 'model.onnx'} and {args.out / 'model.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``dyhead-export`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="dyhead-export",
        description="Export DyHead detectors: PyTorch weights -> ONNX -> TensorRT engine.",
    )
    add_version_argument(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_onnx(subparsers)
    add_tensorrt_parser(subparsers)
    add_engine_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dyhead-export`` console script."""
    args = build_parser().parse_args(argv)
    return run_command(args, logging.DEBUG if args.verbose else logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
