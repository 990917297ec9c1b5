"""``dyhead-export tensorrt``: build a TensorRT engine (model.plan) and verify it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dyhead_serve.cli.model_options import add_model_arguments, model_source_from_args, overrides_from_args
from dyhead_serve.errors import UserError
from dyhead_serve.export.tensorrt_build import PROFILES, parse_shape
from dyhead_serve.runtime.options import PRECISIONS

__all__ = ["add_tensorrt_parser", "profile_from_args"]

EPILOG = """\
examples:
  dyhead-export tensorrt --onnx exported/atss --out exported/atss --precision fp16  # a float16 export
  dyhead-export tensorrt --config dyhead_r50_atss_fpn_1x --weights w.pth --out exported/atss-trt --fp16
  dyhead-export tensorrt --onnx exported/atss --out exported/atss --profile coco-batch8 --workspace 8
  dyhead-export tensorrt --onnx exported/atss --out exported/atss --min-shape 1x3x128x128 \\
      --opt-shape 1x3x896x1408 --max-shape 1x3x1408x1408

With --config/--weights (or --model) the ONNX export runs first (into --out) and the engine is
verified against PyTorch on an image; with --onnx it is verified against ONNX Runtime when the
graph uses DeformConv. fp16 engines print max box and score deltas and detections lost or gained.
Serve with `dyhead-serve serve --model OUT --backend tensorrt`. An engine only runs with the
TensorRT version and GPU model it was built with: rebuild it on the serving machine.
"""


def add_tensorrt_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``tensorrt`` subcommand."""
    p = subparsers.add_parser(
        "tensorrt",
        help="build a TensorRT engine (model.plan + model.json) and verify it",
        description="Build a TensorRT engine from an exported model.onnx (or export one first), with "
        "an optimisation profile for dynamic batch and image size and a timing cache.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    source = add_model_arguments(p, exported=False, default=False, required=True)
    source.add_argument(
        "--onnx", type=Path, help="folder with model.onnx and model.json (dyhead-export onnx)"
    )
    p.add_argument("--out", required=True, type=Path, help="output folder for model.plan and model.json")
    p.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="fp32",
        help="engine precision (default fp32). fp16 builds from the float16 ONNX graph (strongly typed "
        "from TensorRT 10.12 on): exported so from --config/--model, or, with --onnx of a float32 export "
        "and another --out, converted into --out first (an in-place --out needs `dyhead-export onnx "
        "--precision fp16`); verified with float16 tolerances",
    )
    p.add_argument(
        "--fp16", dest="precision", action="store_const", const="fp16", help="same as --precision fp16"
    )
    p.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="coco",
        help="shape preset (default coco: up to 1408x1408; large: up to 2048x2048, for mmdetection's Swin-L)",
    )
    for bound in ("min", "opt", "max"):
        p.add_argument(f"--{bound}-shape", type=_shape, metavar="NxCxHxW", help=f"{bound} images shape")
    p.add_argument("--workspace", type=float, default=4.0, metavar="GB", help="builder workspace (default 4)")
    p.add_argument(
        "--dcn",
        choices=["plugin", "onnx"],
        default=None,
        help="deformable convs as our plugin's nodes (AOT Triton kernel; the default here) or as ONNX "
        "DeformConv nodes (TensorRT builds them with its standard ModulatedDeformConv2d plugin); the "
        "names of `dyhead-export onnx --dcn`. With --onnx the graph decides and this must agree",
    )
    p.add_argument("--plugin-impl", choices=["aot", "jit"], default="aot", help="plugin implementation")
    p.add_argument(
        "--timing-cache",
        type=Path,
        default=None,
        help="timing cache file (default: in OUT, named after the TensorRT, Triton and plugin versions "
        "and the kernel tiles)",
    )
    p.add_argument("--verify-image", type=Path, default=None, help="image for the verification")
    p.add_argument("--no-verify", action="store_true", help="skip the verification")
    p.set_defaults(func=_run_tensorrt)


def _shape(text: str) -> tuple[int, int, int, int]:
    try:
        return parse_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def profile_from_args(args: argparse.Namespace) -> Any:
    """The preset named by --profile with any of --min/--opt/--max-shape replacing its bounds."""
    from dataclasses import replace

    profile = PROFILES[args.profile]
    overrides = {k: getattr(args, f"{k}_shape") for k in ("min", "opt", "max") if getattr(args, f"{k}_shape")}
    return replace(profile, **overrides)


def _run_tensorrt(args: argparse.Namespace) -> int:
    from dyhead_serve.data.sample_image import synthetic_photo
    from dyhead_serve.export.external_weights import check_external_data
    from dyhead_serve.export.tensorrt_build import (
        BuildOptions,
        build_engine,
        graph_dcn_flavour,
        graph_precision,
    )
    from dyhead_serve.pipeline.image_io import read_image

    def step(text: str) -> None:
        print(f"[tensorrt] {text}", file=sys.stderr)

    fp16 = args.precision == "fp16"

    if args.onnx is not None and (args.weights is not None or overrides_from_args(args)):
        raise UserError(
            f"{args.onnx} is an exported network: --weights and config overrides no longer apply "
            "(export again with `dyhead-export onnx` to change them)"
        )
    image = read_image(args.verify_image) if args.verify_image else synthetic_photo(480, 640)
    reference = None
    if args.onnx is not None:
        import onnx

        onnx_dir = args.onnx
        graph = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False)
        check_external_data(graph, onnx_dir)
        flavour = graph_dcn_flavour(graph)
        if flavour is not None and args.dcn not in (None, flavour):
            found = "plugin" if flavour == "plugin" else "DeformConv"
            raise UserError(
                f"{onnx_dir}/model.onnx has {found} nodes but --dcn {args.dcn} was asked; "
                f"re-export with `dyhead-export onnx --dcn {args.dcn}`"
            )
        if fp16 and graph_precision(graph) == "fp32" and args.out.resolve() != onnx_dir.resolve():
            # An fp16 engine comes from a float16 graph (strongly typed builds): write the float16
            # twin into --out and build from it.
            onnx_dir = _float16_twin(onnx_dir, args.out, step)
    else:
        reference = _export_first(args, step)
        onnx_dir = args.out
        flavour = args.dcn or "plugin"
    options = BuildOptions(
        profile=profile_from_args(args),
        fp16=fp16,
        workspace_gb=args.workspace,
        plugin_impl=args.plugin_impl,
        timing_cache=args.timing_cache,
        timing_cache_dir=args.out,
    )
    plan = build_engine(onnx_dir, args.out, options, on_step=step)
    if args.out.resolve() != onnx_dir.resolve():
        import shutil

        shutil.copy2(onnx_dir / "model.onnx", args.out / "model.onnx")
    print(f"wrote {plan}")
    if args.no_verify:
        print("not verified (--no-verify)")
        return 0
    if reference is None and flavour != "plugin":
        from dyhead_serve.runtime.onnxruntime_backend import OnnxRuntimeBackend

        reference = OnnxRuntimeBackend(onnx_dir, device="cpu")
    if reference is None:
        print(
            "not verified: ONNX Runtime cannot run the plugin graph; build with --config/--weights "
            "to verify against PyTorch"
        )
        return 0
    return _verify(reference, args.out, image, fp16, step)


def _export_first(args: argparse.Namespace, step: Any) -> Any:
    """Export --config/--weights (or --model) to ONNX in --out; return the torch backend."""
    from dyhead_serve.export.onnx_export import export_onnx
    from dyhead_serve.runtime.loader import load_torch_backend_from

    source = model_source_from_args(args, exported=False, default=False)
    step("loading weights")
    backend = load_torch_backend_from(source, device="cpu")
    export_onnx(
        backend,
        args.out,
        dcn=args.dcn or "plugin",
        provenance=source.provenance(),
        on_step=step,
        precision=args.precision,
    )
    return backend


def _float16_twin(onnx_dir: Path, out: Path, step: Any) -> Path:
    """The float16 twin of the float32 export ``onnx_dir``, written to ``out``."""
    from dyhead_serve.export.fp16 import convert_folder_to_float16

    step(f"converting {onnx_dir}/model.onnx to a mixed-precision float16 graph in {out}")
    try:
        report = convert_folder_to_float16(onnx_dir, out)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    step(f"float16: {report.format()}")
    return out


def _verify(reference: Any, out: Path, image: Any, fp16: bool, step: Any) -> int:
    from dyhead_serve.export.verify import compare_backends, tolerances_for
    from dyhead_serve.runtime.tensorrt_backend import TensorRTBackend

    step(f"verifying the engine against {reference.name}")
    tolerances = tolerances_for("fp16" if fp16 else "fp32")
    report = compare_backends(reference, TensorRTBackend(out), image, tolerances)
    print(f"verification (TensorRT {'fp16' if fp16 else 'fp32'} engine vs {reference.name}, one image):")
    print(report.format())
    if fp16:
        print(
            f"  fp16: max box delta {report.box_max_px:.3g} px, max score delta {report.score_max:.3g}, "
            f"detections lost {report.lost}, gained {report.gained} (tolerances: {tolerances})"
        )
    if not report.ok:
        print(f"error: the engine differs from {reference.name} beyond tolerance; {out} is not to be trusted")
        return 1
    print(f"ok: {out / 'model.plan'} verified")
    return 0
