"""The Triton deformable-conv kernel against torchvision's deform_conv2d on a CUDA GPU.

Shapes: DyHead on an 800x1333 image (padded to 896x1408): P3..P7 at strides 8..128, 256
channels, and for each level the three deformable convs of a DyConv (the level itself, stride 1;
the finer level, stride 2; the coarser level with the larger offset map read as the official
kernel reads it). For fp32 and fp16: median and p90 time (CUDA events), TFLOP/s, the ratio
torchvision / Triton measured in the same run, and the kernel's error against torchvision. Then the
whole-model latency of the torch path (ATSS R50 + DyHead, random weights, an 800x1333 image) in
float32 and under float16 autocast, each with torchvision's kernel and ours
(``use_dcn_kernel``, the in-process form of ``DYHEAD_DCN_KERNEL=torchvision|triton``), with the
largest relative difference of the outputs from torchvision's in the same precision.

    python benchmarks/dcn_gpu.py
    python benchmarks/dcn_gpu.py --iters 50 --dtypes fp16 --all-tiles
    python benchmarks/dcn_gpu.py --skip-model          # the per-conv table only
    python benchmarks/dcn_gpu.py --skip-convs          # the whole-model table only

Exits with status 2 and a message when no CUDA GPU is visible.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from functools import partial

import torch

PADDED_HW = (896, 1408)  # 800x1333 padded to multiples of 128
STRIDES = (8, 16, 32, 64, 128)
CHANNELS = 256
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def time_cuda(fn: Callable[[], object], iters: int, warmup: int) -> list[float]:
    """Milliseconds per call, one CUDA-event pair per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def p90(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(0.9 * len(values)))]


def dyhead_convs() -> list[tuple[str, tuple[int, int], int, tuple[int, int]]]:
    """(name, input size, stride, offset-map size) of every deformable conv of one DyConv block."""
    sizes = [(PADDED_HW[0] // s, PADDED_HW[1] // s) for s in STRIDES]
    convs = []
    for level, size in enumerate(sizes):
        convs.append((f"P{level + 3} same", size, 1, size))
        if level > 0:
            convs.append((f"P{level + 3} finer s2", sizes[level - 1], 2, size))
        if level < len(sizes) - 1:
            convs.append((f"P{level + 3} coarser", sizes[level + 1], 1, size))
    return convs


def bench_convs(args: argparse.Namespace) -> None:
    from dyhead_serve.ops import modulated_deform_conv2d, use_dcn_kernel
    from dyhead_serve.plugins import modulated_deform_conv
    from dyhead_serve.plugins.mdcn_kernel import DEFAULT_TILE, TILES

    tiles = TILES if args.all_tiles else (DEFAULT_TILE,)
    header = (
        f"{'conv':16s} {'dtype':5s} {'in HxW':>9s} {'tv ms':>8s} {'tv p90':>8s} {'tv TF/s':>8s} "
        f"{'tri ms':>8s} {'tri p90':>8s} {'tri TF/s':>8s} {'tv/tri':>7s} {'rel err':>8s} tile"
    )
    print(header)
    print("-" * len(header))
    totals = {name: [0.0, 0.0] for name in args.dtypes}
    for name in args.dtypes:
        dtype = DTYPES[name]
        for conv, (h, w), stride, (mh, mw) in dyhead_convs():
            gen = torch.Generator(device="cuda").manual_seed(0)
            x = torch.randn(args.batch, CHANNELS, h, w, device="cuda", generator=gen).to(dtype)
            offset_mask = torch.randn(args.batch, 27, mh, mw, device="cuda", generator=gen).to(dtype)
            offset, mask = offset_mask[:, :18], offset_mask[:, 18:].sigmoid()
            weight = (torch.randn(CHANNELS, CHANNELS, 3, 3, device="cuda", generator=gen) * 0.02).to(dtype)
            bias = torch.zeros(CHANNELS, device="cuda", dtype=dtype)
            conv_args = (x, offset, mask, weight, bias, stride, 1)
            with use_dcn_kernel("torchvision"):
                reference = modulated_deform_conv2d(*conv_args)
                tv = time_cuda(partial(modulated_deform_conv2d, *conv_args), args.iters, args.warmup)
            best: tuple[list[float], str, float] | None = None
            for tile in tiles:
                triton_conv = partial(modulated_deform_conv, *conv_args, offset_mode="leading", tile=tile)
                got = triton_conv()
                err = float((got.float() - reference.float()).abs().max() / reference.float().abs().max())
                times = time_cuda(triton_conv, args.iters, args.warmup)
                if best is None or statistics.median(times) < statistics.median(best[0]):
                    best = (times, tile.name, err)
            assert best is not None
            ho, wo = reference.shape[-2:]
            flops = 2.0 * args.batch * CHANNELS * ho * wo * CHANNELS * 9
            tv_ms, tri_ms = statistics.median(tv), statistics.median(best[0])
            totals[name][0] += tv_ms
            totals[name][1] += tri_ms
            size = f"{h}x{w}"
            print(
                f"{conv:16s} {name:5s} {size:>9s} {tv_ms:8.3f} {p90(tv):8.3f} {flops / tv_ms / 1e9:8.2f} "
                f"{tri_ms:8.3f} {p90(best[0]):8.3f} {flops / tri_ms / 1e9:8.2f} {tv_ms / tri_ms:7.2f} "
                f"{best[2]:8.1e} {best[1]}"
            )
    for name, (tv_total, tri_total) in totals.items():
        print(
            f"one DyConv block, {name}: torchvision {tv_total:.2f} ms, Triton {tri_total:.2f} ms "
            f"(x{tv_total / tri_total:.2f})"
        )


def bench_model(args: argparse.Namespace) -> None:
    """Whole-model latency of the torch path, float32 and float16 autocast, each kernel."""
    from dyhead_serve.config import load_config
    from dyhead_serve.modeling.build import build_model
    from dyhead_serve.ops import use_dcn_kernel

    model = build_model(load_config("dyhead_r50_atss_fpn_1x", overrides=["MODEL.DEVICE", "cuda"])).eval()
    images = torch.randn(args.batch, 3, *PADDED_HW, device="cuda")
    sizes = torch.tensor([[800, 1333]] * args.batch, device="cuda")
    print(
        f"\nwhole model (ATSS R50 + 6 DyHead blocks, random weights), batch {args.batch}, an 800x1333 "
        f"image padded to {PADDED_HW[0]}x{PADDED_HW[1]}:"
    )
    header = f"{'precision':13s} {'kernel':12s} {'median ms':>10s} {'p90 ms':>8s} {'ratio':>7s}"
    print(f"{header} {'out rel diff':>12s}")
    for precision in args.model_precisions:
        autocast = precision == "fp16-autocast"
        baseline: tuple[float, dict[str, torch.Tensor]] | None = None
        for kernel in ("torchvision", "triton"):
            with use_dcn_kernel(kernel), torch.inference_mode(), torch.autocast("cuda", enabled=autocast):
                outputs = model(images, sizes)
                times = time_cuda(partial(model, images, sizes), args.model_iters, 3)
            median = statistics.median(times)
            if baseline is None:
                baseline = (median, outputs)
            diff = max(
                float((outputs[k].float() - ref.float()).abs().max() / ref.float().abs().max())
                for k, ref in baseline[1].items()
            )
            print(
                f"{precision:13s} {kernel:12s} {median:10.2f} {p90(times):8.2f} {baseline[0] / median:7.2f} "
                f"{diff:12.2e}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "fp16"])
    parser.add_argument("--all-tiles", action="store_true", help="time every tile, report the fastest")
    parser.add_argument("--model-iters", type=int, default=10)
    parser.add_argument(
        "--model-precisions", nargs="+", choices=["fp32", "fp16-autocast"], default=["fp32", "fp16-autocast"]
    )
    parser.add_argument("--skip-model", action="store_true", help="only the per-conv table")
    parser.add_argument("--skip-convs", action="store_true", help="only the whole-model table")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            "dcn_gpu: no CUDA GPU is visible; this benchmark needs one (nothing was measured)",
            file=sys.stderr,
        )
        return 2
    print(f"GPU: {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))})")
    print(f"torch {torch.__version__}; ratios are torchvision time / Triton time, same run\n")
    if not args.skip_convs:
        bench_convs(args)
    if not args.skip_model:
        bench_model(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
