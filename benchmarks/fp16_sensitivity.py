"""Which ops lose accuracy in float16: the float16 graph against the float32 one, per op choice.

The model is exported to a float32 ONNX graph once; then float16 graphs are made from it
(export/fp16.py) with the shipped choice of float32 ops (``policy``), with every op allowed in
float16 (``all-fp16``), with each of the policy's ops allowed in float16 in turn (``-Op``) and
with each of a few other ops kept in float32 in turn (``+Op``). Each runs in ONNX Runtime on the
CPU beside the float32 graph, on the same images, and the table shows the largest raw-output
difference (relative to the output's scale), the largest box and score differences of matched
detections, and the detections found by one side only.

ONNX Runtime on the CPU runs most float16 nodes in float32 behind casts it inserts, so these
numbers measure float16 storage of weights and activations between nodes, not float16
arithmetic inside an op (what a GPU does): benchmarks/gpu_check.sh measures the engines.

    python benchmarks/fp16_sensitivity.py --model default --image shapes
    python benchmarks/fp16_sensitivity.py --model dyhead_r50_atss_fpn_1x --weights w.pth --image astronaut
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from environment import describe

from dyhead_serve.data.synthetic import render_image
from dyhead_serve.export.fp16 import KEEP_FLOAT32, convert_to_float16
from dyhead_serve.export.onnx_export import export_onnx
from dyhead_serve.export.verify import FP16_TOLERANCES, VerifyReport, compare_backends
from dyhead_serve.pipeline.image_io import read_image
from dyhead_serve.pipeline.preprocess import InputSpec, preprocess
from dyhead_serve.runtime.loader import load_backend, load_torch_backend
from dyhead_serve.runtime.onnxruntime_backend import OnnxRuntimeBackend
from dyhead_serve.runtime.options import ModelOptions

EXTRA = ("Sigmoid", "Resize", "BatchNormalization", "GlobalAveragePool", "Div", "Clip", "MatMul", "Gemm")


def images_for(name: str, count: int) -> list[np.ndarray]:
    if name == "shapes":
        rng = np.random.default_rng(0)
        return [render_image(rng, 256, 320)[0] for _ in range(count)]
    if name in ("astronaut", "coffee"):
        from skimage import data

        return [getattr(data, name)()]
    return [read_image(name)]


def variants(graph: onnx.ModelProto) -> list[tuple[str, frozenset[str]]]:
    ops = {node.op_type for node in graph.graph.node}
    found = [("policy", KEEP_FLOAT32), ("all-fp16", frozenset())]
    found += [(f"-{op}", KEEP_FLOAT32 - {op}) for op in sorted(KEEP_FLOAT32 & ops)]
    found += [(f"+{op}", KEEP_FLOAT32 | {op}) for op in EXTRA if op in ops]
    return found


def measure(
    reference: OnnxRuntimeBackend, candidate: OnnxRuntimeBackend, images: list[np.ndarray]
) -> VerifyReport:
    total = VerifyReport()
    for image in images:
        report = compare_backends(reference, candidate, image, FP16_TOLERANCES)
        for name, diff in report.raw_max_abs.items():
            relative = diff / max(1.0, report.raw_scale[name])
            total.raw_max_abs[name] = max(total.raw_max_abs.get(name, 0.0), relative)
        total.box_max_px = max(total.box_max_px, report.box_max_px)
        total.score_max = max(total.score_max, report.score_max)
        total.num_reference += report.num_reference
        total.num_compared += report.num_compared
        total.lost += report.lost
        total.gained += report.gained
    return total


RANGE_OPS = (*sorted(KEEP_FLOAT32), *EXTRA, "Conv", "DeformConv", "Add", "Mul")


def value_ranges(graph: onnx.ModelProto, folder: Path, images: list[np.ndarray], spec: InputSpec) -> None:
    """Largest |input| and |output| per op type in the float32 graph (every float value made an
    output). Float16 overflows above 65504: a normalisation squares its centred inputs, so inputs
    beyond 256 overflow its variance when computed in float16; Exp overflows above 11.09."""
    import onnxruntime as ort

    inferred = onnx.shape_inference.infer_shapes(graph)
    floats = {
        v.name for v in inferred.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    probe = onnx.ModelProto.FromString(graph.SerializeToString())
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in sorted(floats - known))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    path = folder / "probe.onnx"
    onnx.save(probe, str(path))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    largest: dict[str, float] = {}
    for image in images:
        batch = preprocess([image], spec)
        values = dict(zip(names, session.run(None, {"images": batch.images.numpy()}), strict=True))
        values["images"] = batch.images.numpy()
        for name, value in values.items():
            if value.size:
                largest[name] = max(largest.get(name, 0.0), float(np.abs(value).max()))
    print("\nvalue ranges in the float32 graph (max |x| over the images; float16 max 65504):")
    print(f"{'op':22s} {'nodes':>5s} {'max |input|':>12s} {'max |output|':>13s}")
    for op in RANGE_OPS:
        nodes = [n for n in graph.graph.node if n.op_type == op]
        if not nodes:
            continue
        inputs = max((largest.get(x, 0.0) for n in nodes for x in n.input[:1]), default=0.0)
        outputs = max((largest.get(x, 0.0) for n in nodes for x in n.output), default=0.0)
        print(f"{op:22s} {len(nodes):5d} {inputs:12.4g} {outputs:13.4g}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default", help="default, a zoo name or a config")
    parser.add_argument("--weights", default=None, help="checkpoint (default: the zoo's, random for configs)")
    parser.add_argument("--image", default="shapes", help="shapes (generated), astronaut, coffee, or a file")
    parser.add_argument("--count", type=int, default=4, help="generated shapes images (default 4)")
    parser.add_argument("--ranges", action="store_true", help="print the value ranges per op type instead")
    args = parser.parse_args()
    print(describe())
    if args.model == "default" and args.weights is None:
        backend = load_backend(ModelOptions("default", backend="torch", device="cpu"))
    else:
        backend = load_torch_backend(args.model, args.weights, device="cpu")
    images = images_for(args.image, args.count)
    with tempfile.TemporaryDirectory() as tmp:
        fp32_dir = Path(tmp) / "fp32"
        export_onnx(backend, fp32_dir)
        reference = OnnxRuntimeBackend(fp32_dir, device="cpu")
        graph = onnx.load(str(fp32_dir / "model.onnx"))
        if args.ranges:
            value_ranges(graph, Path(tmp), images, backend.input_spec)
            return
        print(
            f"model {args.model}, image {args.image} ({len(images)}); "
            "reference: the float32 graph in ONNX Runtime"
        )
        print(
            f"{'variant':22s} {'fp16 weights':>12s} {'raw rel diff':>13s} {'box px':>8s} {'score':>8s} "
            f"{'matched':>8s} {'lost':>5s} {'gained':>6s}"
        )
        for name, keep in variants(graph):
            folder = Path(tmp) / name.strip("+-") / name[0]
            folder.mkdir(parents=True)
            shutil.copy(fp32_dir / "model.json", folder / "model.json")
            converted, report = convert_to_float16(graph, keep=keep, base_dir=fp32_dir)
            onnx.save(converted, str(folder / "model.onnx"))
            result = measure(reference, OnnxRuntimeBackend(folder, device="cpu"), images)
            raw = max(result.raw_max_abs.values())
            print(
                f"{name:22s} {report.weights_fraction:12.1%} {raw:13.2e} {result.box_max_px:8.3f} "
                f"{result.score_max:8.4f} {result.num_compared:4d}/{result.num_reference:<3d} "
                f"{result.lost:5d} {result.gained:6d}"
            )


if __name__ == "__main__":
    main()
