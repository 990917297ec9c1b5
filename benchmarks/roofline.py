"""How close each CPU backend comes to this machine's float32 roofline.

For each model, the benchmark

1. counts the network's floating-point operations on one image of the given input size:
   ``torch.utils.flop_counter.FlopCounterMode`` for the standard ops (convolutions, matrix
   products; it counts a multiply-add as 2 FLOPs and ignores elementwise ops, normalisations,
   activations, pooling and interpolation), plus an analytic count for every modulated deformable
   convolution, which the counter does not see (torchvision's custom op): its GEMM,
   ``2 * N * Cout * (Cin / groups) * kh * kw * Hout * Wout``. Not counted: the bilinear sampling
   of the deformable convolutions (about 4 multiply-adds per sampled value and a mask multiply,
   ``~10 * N * Cin * kh * kw * Hout * Wout``, ``5 / Cout`` of their GEMM: 2% at DyHead's 256
   channels, though it costs far more time than that, see ``--profile``), decoding and
   preprocessing;
2. measures this machine's SGEMM peak in the same run, with the same thread count: the best
   of several float32 matrix products (4096 x 4096 x 4096) through ``torch.matmul`` and
   ``numpy.matmul``, before and after the models (on a shared machine a neighbour's load can
   lower one measurement by 5-10%, which would flatter every fraction);
3. computes the roofline time, FLOPs / peak, and times each backend's network (``infer``:
   tensor in, raw outputs out; no preprocessing or decoding) on a batch of one image: the median
   of ``--iters`` runs (more for a fast model: at least ``--min-seconds`` of them) after
   ``--warmup`` untimed ones. The fraction of the roofline is
   roofline time / measured time.

The models' weights: ``dyhead_r50_atss_fpn_1x`` is built from its config with random weights
(seeded), ``default`` is the embedded demo model with its trained weights. FLOPs and GEMM time do
not depend on weight values; the deformable convs' sampling does a little, through the offsets:
random weights give ATSS R-50 offsets of about 0.1 pixel (the embedded model's trained ones are
about 1.5 on a photograph), so its samples read nearly regular memory. ``--offset-gain 20``
scales the offset convs' weights to offsets of trained magnitude (~1.7 pixel); the line above
each table prints the mean |offset|.

    python benchmarks/roofline.py                                  # both models, torch + ONNX Runtime
    python benchmarks/roofline.py --model dyhead_r50_atss_fpn_1x --backends onnxruntime,openvino --profile
    python benchmarks/roofline.py --model dyhead_r50_atss_fpn_1x --backends onnxruntime --ort-variants
    python benchmarks/roofline.py --model dyhead_r50_atss_fpn_1x --offset-gain 20 --backends onnxruntime
    python benchmarks/roofline.py --flops-only                     # FLOP count and SGEMM peak only

Backends: ``torch`` (eager PyTorch, torchvision's deformable conv), ``onnxruntime`` (the graph
``dyhead-export onnx`` writes, in :class:`OnnxRuntimeBackend` as shipped), ``openvino`` (not a
dyhead-serve runtime: measured for comparison, ``pip install openvino``; the torch model
converted in this process by ``openvino.convert_model``, as OpenVINO's ONNX reader has no
``DeformConv``). ``--ort-variants`` adds ONNX Runtime with one session setting changed at a
time (:data:`ORT_VARIANTS`). ``max|diff|`` is the largest absolute difference of the raw outputs
from torch's on the same input. ATSS R-50 at 800x1344 takes about 8 s per image in torch eager
on 2 cores: choose ``--backends`` and ``--iters`` accordingly.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from environment import describe, torch_backend_for
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from dyhead_serve.export.onnx_export import export_onnx
from dyhead_serve.ops.deform_conv import ModulatedDeformConv2d
from dyhead_serve.runtime.onnxruntime_backend import OnnxRuntimeBackend
from dyhead_serve.runtime.torch_backend import TorchBackend

BACKENDS = ("torch", "onnxruntime", "openvino")
DEFAULT_SIZES = {"dyhead_r50_atss_fpn_1x": "800x1344"}


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one forward pass: ``standard`` from torch's counter, ``deformable`` analytic."""

    standard: int
    deformable: int
    deformable_layers: int
    mean_abs_offset: float = 0.0  # pixels, over every deformable conv's offsets (0: none)

    @property
    def total(self) -> int:
        return self.standard + self.deformable


def deform_conv_flops(weight_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> int:
    """FLOPs of a deformable convolution's GEMM: ``2 * N * Cout * (Cin / groups) * kh * kw *
    Hout * Wout`` (a multiply-add is 2 FLOPs, as torch's counter counts a convolution).

    Args:
        weight_shape: ``[Cout, Cin / groups, kh, kw]``.
        output_shape: ``[N, Cout, Hout, Wout]``.
    """
    cout, cin_per_group, kh, kw = weight_shape
    n, out_channels, out_h, out_w = output_shape
    if out_channels != cout:
        raise ValueError(f"output has {out_channels} channels, the weight {cout}")
    return 2 * n * cout * cin_per_group * kh * kw * out_h * out_w


def count_flops(model: nn.Module, *inputs: Tensor) -> FlopCount:
    """Run ``model(*inputs)`` once under ``FlopCounterMode``, with a forward hook on every
    :class:`ModulatedDeformConv2d` adding its analytic GEMM count and recording how far its
    offsets move the samples (the cost of the sampling grows with it: scattered reads)."""
    deformable: list[int] = []
    offsets: list[Tensor] = []

    def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        assert isinstance(module, ModulatedDeformConv2d)
        deformable.append(deform_conv_flops(tuple(module.weight.shape), tuple(output.shape)))
        offsets.append(args[1].abs().mean())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, ModulatedDeformConv2d)]
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    mean_abs_offset = float(torch.stack(offsets).mean()) if offsets else 0.0
    return FlopCount(counter.get_total_flops(), sum(deformable), len(deformable), mean_abs_offset)


def scale_offsets(model: nn.Module, gain: float) -> int:
    """Multiply the weights and biases of the convolutions that predict the deformable convs'
    offsets and masks (DyHead's 27-channel ``offset`` convs) by ``gain``: random weights give
    offsets of about 0.1 pixel, trained ones about 1.5 (the embedded model's). Returns how many
    convolutions were scaled."""
    scaled = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and name.endswith("offset") and module.out_channels == 27:
            with torch.no_grad():
                module.weight.mul_(gain)
                if module.bias is not None:
                    module.bias.mul_(gain)
            scaled += 1
    return scaled


def sgemm_peak(size: int = 4096, repeats: int = 8) -> tuple[float, str]:
    """The best float32 matrix-product rate in FLOP/s over ``repeats`` ``size``-cubed products,
    through torch and numpy; returns (rate, which library reached it)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    candidates: dict[str, Callable[[], object]] = {
        "torch.matmul": lambda: torch.matmul(ta, tb),
        "numpy.matmul": lambda: np.matmul(a, b),
    }
    best: tuple[float, str] = (0.0, "")
    for name, product in candidates.items():
        product()  # warm-up: thread pools, page faults
        for _ in range(repeats):
            t0 = time.perf_counter()
            product()
            rate = 2 * size**3 / (time.perf_counter() - t0)
            best = max(best, (rate, name))
    return best


Run = Callable[[], dict[str, np.ndarray]]


def time_runs(run: Run, iters: int, warmup: int, min_seconds: float = 0.0) -> list[float]:
    """Wall-clock seconds of ``run()`` per call, after ``warmup`` untimed calls: at least ``iters``
    calls, more until ``min_seconds`` have been timed."""
    for _ in range(warmup):
        run()
    runs: list[float] = []
    while len(runs) < iters or sum(runs) < min_seconds:
        t0 = time.perf_counter()
        run()
        runs.append(time.perf_counter() - t0)
    return runs


def as_numpy(outputs: dict[str, Tensor]) -> dict[str, np.ndarray]:
    return {name: value.numpy() for name, value in outputs.items()}


def torch_run(reference: TorchBackend, images: Tensor, sizes: Tensor) -> Run:
    def run() -> dict[str, np.ndarray]:
        return as_numpy(reference.infer(images, sizes))

    return run


def onnxruntime_run(model_dir: Path, images: Tensor, sizes: Tensor) -> Run:
    """:class:`OnnxRuntimeBackend` as shipped, on an export of the model."""
    backend = OnnxRuntimeBackend(model_dir, device="cpu")

    def run() -> dict[str, np.ndarray]:
        return as_numpy(backend.infer(images, sizes))

    return run


def _extended(options: Any, ort: Any) -> None:
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED


def _parallel(options: Any, ort: Any) -> None:
    options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    options.inter_op_num_threads = torch.get_num_threads()


# ONNX Runtime session settings tried against the shipped ones (ORT_ENABLE_ALL, default threads):
# --ort-variants times each; name -> a change to SessionOptions.
ORT_VARIANTS: dict[str, Callable[[Any, Any], None]] = {
    "extended": _extended,  # no layout optimisations (NCHWc convolutions)
    "no-nchwc": lambda o, _: o.add_session_config_entry(
        "optimization.disable_specified_optimizers", "NchwcTransformer"
    ),
    "no-spin": lambda o, _: o.add_session_config_entry("session.intra_op.allow_spinning", "0"),
    "no-mem-pattern": lambda o, _: setattr(o, "enable_mem_pattern", False),
    "no-arena": lambda o, _: setattr(o, "enable_cpu_mem_arena", False),
    "block-base-4": lambda o, _: o.add_session_config_entry("session.dynamic_block_base", "4"),
    "parallel": _parallel,  # independent branches (the FPN levels) at once
}


def onnxruntime_variant_run(model_dir: Path, images: Tensor, sizes: Tensor, variant: str) -> Run:
    """A bare ONNX Runtime CPU session with the shipped settings changed by ``ORT_VARIANTS[variant]``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    ORT_VARIANTS[variant](options, ort)
    session = ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    arrays = {"images": images.numpy(), "image_sizes": sizes.numpy()}
    feeds = {i.name: arrays[i.name] for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]

    def run() -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, feeds), strict=True))

    return run


def openvino_run(reference: TorchBackend, images: Tensor, sizes: Tensor, profile: bool) -> Run:
    """OpenVINO's CPU plugin on the torch model converted by ``openvino.convert_model`` (its
    ONNX reader has no ``DeformConv``), shapes fixed to the input's, float32 inference."""
    import openvino as ov

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ov.convert_model(reference.model.eval(), example_input=(images, sizes))
    model.reshape({model.inputs[0]: list(images.shape), model.inputs[1]: list(sizes.shape)})
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": profile}
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    names = list(reference.model(images[:, :, :64, :64], sizes.clamp(max=64)).keys())
    feeds = [images.numpy(), sizes.numpy()]

    def run() -> dict[str, np.ndarray]:
        results = request.infer(feeds)
        return {name: np.array(results[i]) for i, name in enumerate(names)}

    run.request = request  # type: ignore[attr-defined]  # for the profile
    return run


@contextlib.contextmanager
def onnx_export_of(reference: TorchBackend) -> Iterator[Path]:
    """A temporary folder holding ``reference`` exported as ``dyhead-export onnx`` does."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(reference, tmp)
        yield Path(tmp)


def onnxruntime_profile(model_dir: Path, images: Tensor, sizes: Tensor) -> dict[str, float]:
    """Seconds per ONNX Runtime op type in one run (after a warm-up run), from its profiler."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(model_dir / "profile")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    arrays = {"images": images.numpy(), "image_sizes": sizes.numpy()}
    feeds = {i.name: arrays[i.name] for i in session.get_inputs()}
    session.run(None, feeds)  # the first run allocates: only the second one counts
    session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    last_start = runs[-1]["ts"]
    per_type: dict[str, float] = defaultdict(float)
    for event in events:
        if (
            event.get("cat") == "Node"
            and event["name"].endswith("_kernel_time")
            and event["ts"] >= last_start
        ):
            per_type[event["args"]["op_name"]] += event["dur"] / 1e6
    return dict(per_type)


def openvino_profile(run: Run) -> dict[str, float]:
    """Seconds per OpenVINO node type in the last run (its performance counters)."""
    per_type: dict[str, float] = defaultdict(float)
    for node in run.request.get_profiling_info():  # type: ignore[attr-defined]
        per_type[node.node_type] += node.real_time.total_seconds()
    return dict(per_type)


# What each runtime calls a deformable and an ordinary convolution in its profile.
DEFORMABLE_OPS = {"DeformConv", "DeformableConvolution"}
CONV_OPS = {"Conv", "FusedConv", "Convolution"}


def print_profile(backend: str, per_type: dict[str, float], flops: FlopCount, peak: float) -> None:
    """Kernel time per op type, and the deformable convs / convs / the rest with the GFLOP/s
    each group reached."""
    total = sum(per_type.values())
    deformable = sum(v for k, v in per_type.items() if k in DEFORMABLE_OPS)
    conv = sum(v for k, v in per_type.items() if k in CONV_OPS)
    print(f"  {backend} profile, one run: {1000 * total:.1f} ms in kernels")
    groups = (
        ("deformable convs", deformable, flops.deformable),
        ("convs", conv, flops.standard),
        ("the rest", total - deformable - conv, 0),
    )
    for label, seconds, group_flops in groups:
        rate = (
            f", {group_flops / seconds / 1e9:.0f} GFLOP/s = {100 * group_flops / seconds / peak:.0f}% of peak"
        )
        rate = rate if group_flops and seconds else ""
        print(f"    {label:18s} {1000 * seconds:8.1f} ms {100 * seconds / total:5.1f}%{rate}")
    largest = sorted(per_type.items(), key=lambda kv: -kv[1])
    print("    by op type, ms:", ", ".join(f"{k} {1000 * v:.1f}" for k, v in largest if v / total >= 0.005))


def max_difference(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    return max(float(np.abs(outputs[k] - reference[k]).max()) for k in reference)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="zoo/config name, repeatable (default: dyhead_r50_atss_fpn_1x and default)",
    )
    parser.add_argument(
        "--size",
        default=None,
        help="input tensor size HxW, multiples of the model's size divisibility "
        "(default: 800x1344 for ATSS R-50, min_size x max_size padded for the others)",
    )
    parser.add_argument(
        "--backends",
        default="torch,onnxruntime",
        help=f"comma-separated, from {', '.join(BACKENDS)} (default torch,onnxruntime; "
        "openvino needs `pip install openvino`)",
    )
    parser.add_argument("--iters", type=int, default=3, help="timed runs per backend (default 3)")
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=2.0,
        help="time more runs than --iters until this many seconds are timed (default 2: a small "
        "model's median over many runs)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    parser.add_argument(
        "--profile", action="store_true", help="print ONNX Runtime's (and OpenVINO's) time per op type"
    )
    parser.add_argument(
        "--offset-gain",
        type=float,
        default=1.0,
        help="multiply the offset-predicting convs' weights by this (e.g. 10 for ATSS R-50's random "
        "weights: offsets of trained magnitude, ~1.5 px, instead of ~0.1)",
    )
    parser.add_argument(
        "--ort-variants",
        nargs="?",
        const=",".join(ORT_VARIANTS),
        default="",
        help="also time ONNX Runtime with one session setting changed, for each of these "
        f"(comma-separated; all when none are named): {', '.join(ORT_VARIANTS)}",
    )
    parser.add_argument("--flops-only", action="store_true", help="count FLOPs and measure SGEMM only")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(sorted(unknown))}; choose from {', '.join(BACKENDS)}")
    variants = [v.strip() for v in args.ort_variants.split(",") if v.strip()]
    if set(variants) - set(ORT_VARIANTS):
        parser.error(f"unknown --ort-variants {', '.join(sorted(set(variants) - set(ORT_VARIANTS)))}")
    if variants and "onnxruntime" not in backends:
        parser.error("--ort-variants needs the onnxruntime backend")
    args.ort_variants = variants
    models = args.model or ["dyhead_r50_atss_fpn_1x", "default"]

    threads = torch.get_num_threads()
    print(
        describe(threads)
        + (f" | openvino {importlib.metadata.version('openvino')}" if "openvino" in backends else "")
    )
    # Measured before and after the models, the best of both counting: a neighbour's load during
    # one measurement would otherwise lower the peak and flatter every fraction.
    first, first_source = sgemm_peak()
    results = [measure_model(name, args.size, backends, args) for name in models]
    last, last_source = sgemm_peak()
    peak, source = max((first, first_source), (last, last_source))
    print(
        f"SGEMM peak: {peak / 1e9:.1f} GFLOP/s ({source}, 4096^3 float32, {threads} threads; "
        f"{first / 1e9:.1f} before the models, {last / 1e9:.1f} after)"
    )
    for result in results:
        print_result(result, peak, args.flops_only)


@dataclass
class ModelResult:
    """One model's FLOPs, each backend's timings and the profiles asked for."""

    name: str
    height: int
    width: int
    flops: FlopCount
    rows: list[tuple[str, list[float], float]] = field(default_factory=list)  # backend, times, max|diff|
    profiles: list[tuple[str, dict[str, float]]] = field(default_factory=list)


def measure_model(name: str, size: str | None, backends: list[str], args: argparse.Namespace) -> ModelResult:
    """Count one model's FLOPs and time each backend on it (and profile when asked)."""
    torch.manual_seed(0)  # the same random weights, hence the same offsets, in every run
    reference = torch_backend_for(name)
    spec = reference.input_spec
    div = spec.size_divisibility
    padded = (-(-spec.min_size // div) * div, -(-spec.max_size // div) * div)
    height, width = (int(v) for v in (size or DEFAULT_SIZES.get(name) or "{}x{}".format(*padded)).split("x"))
    images = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    sizes = torch.tensor([[height, width]], dtype=torch.int64)
    if args.offset_gain != 1.0 and not scale_offsets(reference.model, args.offset_gain):
        raise SystemExit(f"{name}: no offset convolutions to scale")
    result = ModelResult(name, height, width, count_flops(reference.model, images, sizes))
    if args.flops_only:
        return result
    print(f"timing {name} at {height}x{width}: {', '.join(backends)}", file=sys.stderr)
    expected = torch_run(reference, images, sizes)()
    # Each backend is built just before it runs and dropped after: one model in memory at a time.
    builders: dict[str, Callable[[], Run]] = {}
    with contextlib.ExitStack() as stack:
        if "torch" in backends:
            builders["torch"] = lambda: torch_run(reference, images, sizes)
        if "onnxruntime" in backends:
            model_dir = stack.enter_context(onnx_export_of(reference))
            builders["onnxruntime"] = lambda: onnxruntime_run(model_dir, images, sizes)
            for variant in args.ort_variants:
                builders[f"ort:{variant}"] = functools.partial(
                    onnxruntime_variant_run, model_dir, images, sizes, variant
                )
            if args.profile:
                result.profiles.append(("onnxruntime", onnxruntime_profile(model_dir, images, sizes)))
        if "openvino" in backends:
            builders["openvino"] = lambda: openvino_run(reference, images, sizes, args.profile)
        for backend_name, build in builders.items():
            run = build()
            difference = max_difference(run(), expected)
            result.rows.append(
                (backend_name, time_runs(run, args.iters, args.warmup, args.min_seconds), difference)
            )
            if args.profile and backend_name == "openvino":
                result.profiles.append(("openvino", openvino_profile(run)))
            del run
    return result


def print_result(result: ModelResult, peak: float, flops_only: bool) -> None:
    """The model's FLOP line, a table row per backend, then the profiles."""
    flops = result.flops
    roofline_s = flops.total / peak
    print(
        f"\n{result.name} at {result.height}x{result.width}: {flops.total / 1e9:.1f} GFLOP = "
        f"{flops.standard / 1e9:.1f} counted by torch + {flops.deformable / 1e9:.1f} in "
        f"{flops.deformable_layers} deformable convs (mean |offset| {flops.mean_abs_offset:.2f} px); "
        f"roofline {1000 * roofline_s:.1f} ms"
    )
    if flops_only:
        return
    columns = ("model", "input", "backend", "GFLOP", "roofline ms", "median ms", "p90 ms", "of roofline")
    print("{:24s} {:>9s} {:18s} {:>6s} {:>11s} {:>9s} {:>8s} {:>11s} max|diff|".format(*columns))
    label = f"{result.name:24s} {result.height:4d}x{result.width:<4d}"
    for backend_name, times, difference in result.rows:
        median, p90 = statistics.median(times), float(np.percentile(times, 90))
        print(
            f"{label} {backend_name:18s} {flops.total / 1e9:6.1f} {1000 * roofline_s:11.1f} "
            f"{1000 * median:9.1f} {1000 * p90:8.1f} {100 * roofline_s / median:10.1f}% {difference:9.1e}"
        )
    for backend_name, per_type in result.profiles:
        print_profile(backend_name, per_type, flops, peak)


if __name__ == "__main__":
    main()
