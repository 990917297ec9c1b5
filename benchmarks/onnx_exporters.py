"""torch's two ONNX exporters on the same model: export time, graph size, operators, ONNX Runtime
latency, and how far apart their outputs are.

Each model is exported twice (opset-19 DeformConv, dynamic batch and size): with the TorchScript
exporter (``--exporter torchscript``, ``torch.onnx.export(dynamo=False)``) and with torch.export +
ONNX Script (``--exporter dynamo``). Both graphs then run the same preprocessed photograph-like
image in ONNX Runtime on the CPU, alternating, in this process.

    python benchmarks/onnx_exporters.py                                  # the embedded default model
    python benchmarks/onnx_exporters.py --model dyhead_r50_atss_fpn_1x --size 800 1216 --iters 5

A model without weights (a zoo name whose checkpoint is not present) gets random weights: the
graphs and their speed do not depend on the values. The ratio is dynamo latency over TorchScript
latency measured in the same run (below 1: the torch.export graph is faster).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxscript
from environment import describe, torch_backend_for

from dyhead_serve.data.sample_image import synthetic_photo
from dyhead_serve.export.onnx_export import EXPORTERS, export_onnx
from dyhead_serve.pipeline.preprocess import preprocess
from dyhead_serve.runtime.onnxruntime_backend import OnnxRuntimeBackend


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default", help="zoo/config name (default: the embedded model)")
    parser.add_argument(
        "--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"), help="image size"
    )
    parser.add_argument("--iters", type=int, default=10, help="timed runs per graph (default 10)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    args = parser.parse_args()

    print(f"{describe(args.threads)} | onnxscript {onnxscript.__version__}")
    backend = torch_backend_for(args.model)
    batch = preprocess([synthetic_photo(*args.size)], backend.input_spec)
    sizes = batch.image_sizes_tensor()
    with tempfile.TemporaryDirectory() as tmp:
        runtimes, rows, outputs = {}, {}, {}
        for exporter in EXPORTERS:
            out = Path(tmp) / exporter
            start = time.perf_counter()
            export_onnx(backend, out, exporter=exporter)
            seconds = time.perf_counter() - start
            graph = onnx.load(str(out / "model.onnx"))
            ops = collections.Counter(node.op_type for node in graph.graph.node)
            rows[exporter] = (seconds, len(graph.graph.node), ops, (out / "model.onnx").stat().st_size)
            runtimes[exporter] = OnnxRuntimeBackend(out, device="cpu", intra_op_threads=args.threads)
            outputs[exporter] = runtimes[exporter].infer(batch.images, sizes)  # also the warm-up run
        runs: dict[str, list[float]] = {e: [] for e in EXPORTERS}
        for _ in range(args.iters):
            for exporter, runtime in runtimes.items():
                start = time.perf_counter()
                runtime.infer(batch.images, sizes)
                runs[exporter].append(time.perf_counter() - start)

    padded = tuple(batch.images.shape[2:])
    print(f"\n{args.model}, one {args.size[0]}x{args.size[1]} image, padded to {padded}")
    header = ("exporter", "export s", "nodes", "MB", "median ms", "p90 ms", "ratio")
    print("{:12s} {:>9s} {:>6s} {:>6s} {:>10s} {:>8s} {:>6s}".format(*header))
    base = statistics.median(runs[EXPORTERS[0]])
    for exporter in EXPORTERS:
        seconds, nodes, _, size = rows[exporter]
        median = statistics.median(runs[exporter])
        p90 = float(np.percentile(runs[exporter], 90))
        print(
            f"{exporter:12s} {seconds:9.1f} {nodes:6d} {size / 1e6:6.1f} {median * 1e3:10.1f} "
            f"{p90 * 1e3:8.1f} {median / base:6.2f}"
        )
    print("\noperators (torchscript -> dynamo), where the counts differ:")
    old, new = rows[EXPORTERS[0]][2], rows[EXPORTERS[1]][2]
    for op in sorted(set(old) | set(new)):
        if old[op] != new[op]:
            print(f"  {op:24s} {old[op]:5d} -> {new[op]:5d}")
    print("\nmax |torchscript - dynamo| of the raw outputs:")
    for name, value in outputs[EXPORTERS[0]].items():
        other = outputs[EXPORTERS[1]][name]
        diff = float((value.float() - other.float()).abs().max()) if value.numel() else 0.0
        print(f"  {name:12s} {diff:.3g} (outputs up to {float(value.float().abs().max()):.3g})")


if __name__ == "__main__":
    main()
