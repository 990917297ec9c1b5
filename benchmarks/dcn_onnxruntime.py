"""One modulated deformable conv in ONNX Runtime on the CPU, three ways, to see what its time is
made of:

- ``DeformConv``: the opset-19 node ``dyhead-export onnx`` writes (ONNX Runtime's kernel: a
  bilinear-sampling im2col, then a GEMM);
- ``GEMM alone``: a ``MatMul`` of the same shape, ``[Cout, Cin*kh*kw] x [Cin*kh*kw, Hout*Wout]``,
  on a column tensor given as input: what the layer would cost if sampling were free;
- ``GridSample+MatMul``: the decomposed formulation (the bilinear sampling as ``GridSample``,
  mask multiply, one ``MatMul`` with the reshaped weight), exported from
  :func:`dyhead_serve.ops.deform_conv.deform_conv2d_by_sampling`.

Median of ``--iters`` runs after one warm-up; GFLOP/s counts the GEMM's FLOPs for every row.
The offsets are random, ``--offset-std`` pixels (trained DyHead offsets are about 1.5 on average).

    python benchmarks/dcn_onnxruntime.py                      # 256 channels at 100x168 (P3 of 800x1344)
    python benchmarks/dcn_onnxruntime.py --size 50x84 --offset-std 0.1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from environment import describe
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

from dyhead_serve.ops.deform_conv import deform_conv2d_by_sampling


class SampledDeformConv(nn.Module):
    """deform_conv2d_by_sampling with a fixed 3x3 weight, stride 1, padding 1."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, input: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        return deform_conv2d_by_sampling(input, offset, mask, self.weight, self.bias, (1, 1), (1, 1), (1, 1))


def _save(
    nodes: list[onnx.NodeProto], inputs: dict[str, list[int]], weights: dict[str, np.ndarray], path: Path
) -> None:
    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(path))


def _time(path: Path, feeds: dict[str, np.ndarray], iters: int) -> tuple[float, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output = session.run(None, feeds)[0]
    runs = []
    for _ in range(iters):
        t0 = time.perf_counter()
        session.run(None, feeds)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), output


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--channels", type=int, default=256, help="Cin = Cout (default 256, DyHead's)")
    parser.add_argument("--size", default="100x168", help="input = output size HxW (default 100x168)")
    parser.add_argument("--offset-std", type=float, default=1.5, help="offsets' standard deviation, pixels")
    parser.add_argument("--iters", type=int, default=10, help="timed runs (default 10)")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    c, k = args.channels, 9
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, c, height, width, generator=generator)
    offset = torch.randn(1, 2 * k, height, width, generator=generator) * args.offset_std
    mask = torch.rand(1, k, height, width, generator=generator)
    weight = torch.randn(c, c, 3, 3, generator=generator) * 0.02
    bias = torch.randn(c, generator=generator)
    expected = deform_conv2d(x, offset, weight, bias, padding=(1, 1), mask=mask).numpy()
    feeds = {"x": x.numpy(), "offset": offset.numpy(), "mask": mask.numpy()}
    shapes = {name: list(value.shape) for name, value in feeds.items()}
    columns = np.random.default_rng(0).standard_normal((c * k, height * width), dtype=np.float32)
    flops = 2 * c * c * k * height * width
    print(describe(torch.get_num_threads()))
    print(
        f"deformable conv {c}->{c} 3x3 at {height}x{width}, offsets ~{args.offset_std} px: "
        f"{flops / 1e9:.2f} GFLOP"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        node = helper.make_node(
            "DeformConv", ["x", "w", "offset", "b", "mask"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]
        )
        _save([node], shapes, {"w": weight.numpy(), "b": bias.numpy()}, folder / "deform_conv.onnx")
        _save(
            [helper.make_node("MatMul", ["w", "columns"], ["y"])],
            {"columns": list(columns.shape)},
            {"w": weight.reshape(c, c * k).numpy()},
            folder / "gemm.onnx",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                SampledDeformConv(weight, bias), (x, offset, mask), str(folder / "grid_sample.onnx"),
                dynamo=False, opset_version=19, input_names=["x", "offset", "mask"], output_names=["y"],
            )  # fmt: skip
        rows = (
            ("DeformConv", folder / "deform_conv.onnx", feeds),
            ("GEMM alone", folder / "gemm.onnx", {"columns": columns}),
            ("GridSample+MatMul", folder / "grid_sample.onnx", feeds),
        )
        print(f"{'formulation':20s} {'median ms':>10s} {'GFLOP/s':>8s} {'max|diff|':>10s}")
        for label, path, inputs in rows:
            seconds, output = _time(path, inputs, args.iters)
            difference = (
                f"{np.abs(output - expected).max():10.1e}" if label != "GEMM alone" else f"{'-':>10s}"
            )
            print(f"{label:20s} {1000 * seconds:10.1f} {flops / seconds / 1e9:8.0f} {difference}")


if __name__ == "__main__":
    main()
