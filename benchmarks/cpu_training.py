"""CPU training speed: the sampling deformable conv (grid_sample + matmul) against torchvision's.

1. One deformable conv, forward + backward, at the embedded model's training shapes (batch 8,
   32 channels, P3 of a 384x384 batch and the coarser levels, stride 1 and 2): median seconds
   with each implementation and the ratio torchvision / sampling, plus their largest difference.
2. A whole training step of the embedded model's config (forward, ATSS losses, backward) on a
   batch of 8 generated images, with each implementation, and the ratio.

    python benchmarks/cpu_training.py
    python benchmarks/cpu_training.py --iters 5 --threads 2

The torchvision step runs with the kernel choice ``torchvision`` (DYHEAD_DCN_KERNEL=torchvision);
training on the CPU otherwise takes the sampling path.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from environment import describe
from torchvision.ops import deform_conv2d

from dyhead_serve.ops import deform_conv, use_dcn_kernel


def median_seconds(fn: Callable[[], object], iters: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _op_step(tensors: tuple[torch.Tensor, ...], stride: int, use_sampling: bool) -> torch.Tensor:
    """Forward + backward of one deformable conv; returns its output."""
    x, offset, mask, weight, bias = (t.clone().requires_grad_() for t in tensors)
    if use_sampling:
        sampling = deform_conv.deform_conv2d_by_sampling
        y = sampling(x, offset, mask, weight, bias, (stride, stride), (1, 1), (1, 1))
    else:
        y = deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)
    (y * y).sum().backward()
    return y.detach()


def bench_op(iters: int) -> None:
    print("one deformable conv, forward + backward (batch 8, 32 -> 32 channels, 3x3)")
    header = ("input", "stride", "torchvision s", "sampling s", "ratio", "rel diff")
    print("{:>12} {:>6} {:>14} {:>11} {:>6} {:>9}".format(*header))
    g = torch.Generator().manual_seed(0)
    for size, stride in ((48, 1), (48, 2), (24, 1), (12, 1)):
        out = (size - 1) // stride + 1
        tensors = (
            torch.randn(8, 32, size, size, generator=g),
            2 * torch.randn(8, 18, out, out, generator=g),
            torch.rand(8, 9, out, out, generator=g),
            0.1 * torch.randn(32, 32, 3, 3, generator=g),
            torch.randn(32, generator=g),
        )
        t_tv = median_seconds(partial(_op_step, tensors, stride, False), iters)
        t_gs = median_seconds(partial(_op_step, tensors, stride, True), iters)
        y_tv, y_gs = _op_step(tensors, stride, False), _op_step(tensors, stride, True)
        diff = float((y_gs - y_tv).abs().max() / y_tv.abs().max())
        shape = f"{size}x{size}"
        print(f"{shape:>12} {stride:>6} {t_tv:>14.4f} {t_gs:>11.4f} {t_tv / t_gs:>6.1f} {diff:>9.1e}")


def bench_step(iters: int) -> None:
    from dyhead_serve.config import load_config
    from dyhead_serve.data.sample_image import synthetic_photo
    from dyhead_serve.modeling.build import build_model
    from dyhead_serve.training.collate import collate_training_batch
    from dyhead_serve.zoo import get_model

    cfg = load_config(get_model("default").config_path, overrides=["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    samples = []
    for seed in range(8):
        image = torch.from_numpy(synthetic_photo(288, 384, seed=seed).copy()).permute(2, 0, 1).float()
        boxes = torch.tensor([[20.0, 30.0, 120.0, 110.0], [200.0, 150.0, 260.0, 230.0]])
        samples.append({"image": image, "gt_boxes": boxes, "gt_classes": torch.tensor([seed % 6, 1])})
    batch = collate_training_batch(
        samples,
        cfg.MODEL.PIXEL_MEAN,
        cfg.MODEL.PIXEL_STD,
        model.size_divisibility,
        torch.device("cpu"),
    )
    sizes = torch.tensor(batch.image_sizes)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        losses = model.forward_train(batch.images, sizes, batch.gt_boxes, batch.gt_classes)
        sum(losses.values()).backward()

    with use_dcn_kernel("torchvision"):
        t_tv = median_seconds(step, iters)
    t_gs = median_seconds(step, iters)
    print(f"\ntraining step of the embedded model, batch 8 at {tuple(batch.images.shape[-2:])}:")
    print(f"  torchvision {t_tv:.3f} s   sampling {t_gs:.3f} s   ratio {t_tv / t_gs:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iters", type=int, default=3, help="timed repetitions (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(describe(args.threads))
    bench_op(args.iters)
    bench_step(args.iters)


if __name__ == "__main__":
    main()
