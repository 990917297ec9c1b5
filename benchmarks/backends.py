"""torch vs ONNX Runtime on the CPU: images/s and p50/p90 latency at batch 1 and 4.

For each model, the PyTorch detector is exported to ONNX (opset-19 DeformConv) in a temporary
folder, then both backends run the same preprocessed batch of photograph-like images (network +
decoding of the raw outputs into detections), in this process, one after the other.

    python benchmarks/backends.py                                   # default model + ATSS R50
    python benchmarks/backends.py --model dyhead_r50_atss_fpn_1x --iters 5 --batch 1
    python benchmarks/backends.py --model default

Ratios are ONNX Runtime throughput over torch throughput measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings

import numpy as np
import torch
from environment import describe, torch_backend_for

from dyhead_serve.data.sample_image import synthetic_photo
from dyhead_serve.export.onnx_export import export_onnx
from dyhead_serve.pipeline.preprocess import preprocess
from dyhead_serve.runtime.base import Backend
from dyhead_serve.runtime.onnxruntime_backend import OnnxRuntimeBackend


def time_backend(backend: Backend, images: list[np.ndarray], iters: int, warmup: int) -> list[float]:
    batch = preprocess(images, backend.input_spec)
    sizes = batch.image_sizes_tensor()
    runs = []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        outputs = backend.infer(batch.images, sizes)
        backend.decoder(outputs, batch.padded_hw, batch.image_sizes, batch.original_sizes)
        if i >= warmup:
            runs.append(time.perf_counter() - t0)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", default=None, help="zoo/config name (repeatable)")
    parser.add_argument(
        "--batch", type=int, action="append", default=None, help="batch sizes (default 1 and 4)"
    )
    parser.add_argument("--iters", type=int, default=3, help="timed iterations (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first (default 1)")
    parser.add_argument("--size", default="800x1333", help="image size HxW (default 800x1333)")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    models = args.model or ["default", "dyhead_r50_atss_fpn_1x"]
    batches = args.batch or [1, 4]
    print(describe(torch.get_num_threads()))
    print(f"CPU, images {height}x{width}")
    columns = ("model", "batch", "backend", "img/s", "p50 ms", "p90 ms", "ratio")
    print("{:28s} {:>5s} {:12s} {:>8s} {:>9s} {:>9s} {:>6s}".format(*columns))
    for name in models:
        reference = torch_backend_for(name)
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_onnx(reference, tmp)  # type: ignore[arg-type]
            ort_backend = OnnxRuntimeBackend(tmp, device="cpu")
            for batch in batches:
                images = [synthetic_photo(height, width, seed=i) for i in range(batch)]
                throughput = {}
                for backend in (reference, ort_backend):
                    runs = time_backend(backend, images, args.iters, args.warmup)
                    p50, p90 = statistics.median(runs), float(np.percentile(runs, 90))
                    throughput[backend.name] = batch / p50
                    ratio = throughput[backend.name] / throughput["torch"]
                    print(
                        f"{name:28s} {batch:5d} {backend.name:12s} {batch / p50:8.2f} {p50 * 1000:9.1f} "
                        f"{p90 * 1000:9.1f} {ratio:6.2f}"
                    )


if __name__ == "__main__":
    main()
