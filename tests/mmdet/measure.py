"""Measure how far our detections are from mmdetection's fixtures, per model, photo and backend.

    python -m tests.mmdet.measure [--models caffe,simple,swin] [--variants small,full] [--onnx]

Prints one line per (model, variant, photo, backend): detections (ours / mmdetection's), class
mismatches, largest box difference in pixels and largest score difference. The tests assert the
same numbers against the tolerances (0.01 px, 1e-4); this prints them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from dyhead_serve.runtime.base import make_predictor
from tests.mmdet.conftest import CAFFE, SIMPLE, SMALL, SWIN, photo, reference, torch_backend

MODELS = {"caffe": CAFFE, "simple": SIMPLE, "swin": SWIN}


def _differences(detections, expected) -> str:
    ref = expected["detections"]
    count = f"{len(detections)}/{len(ref['scores'])}"
    if len(detections) != len(ref["scores"]):
        return f"{count:>8s}  counts differ"
    boxes = torch.tensor(ref["bboxes"], dtype=torch.float64)
    scores = torch.tensor(ref["scores"], dtype=torch.float64)
    mismatches = int((detections.classes != torch.tensor(ref["labels"])).sum())
    box = float((detections.boxes.double() - boxes).abs().max()) if len(scores) else 0.0
    score = float((detections.scores.double() - scores).abs().max()) if len(scores) else 0.0
    return f"{count:>8s} {mismatches:>6d} {box:>12.3g} {score:>12.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="caffe,simple,swin")
    parser.add_argument("--variants", default="small,full")
    parser.add_argument("--onnx", action="store_true", help="also export to ONNX and run ONNX Runtime")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"{'model':42s} {'variant':7s} {'photo':9s} {'backend':11s} {'dets':>8s} {'class':>6s} "
          f"{'box px':>12s} {'score':>12s}  seconds")  # fmt: skip
    for key in args.models.split(","):
        config = MODELS[key]
        for variant in args.variants.split(","):
            overrides = SMALL if variant == "small" else []
            photos = ["astronaut"] if variant == "small" else ["astronaut", "coffee", "chelsea"]
            backend = torch_backend(config, overrides)
            backends = [("torch", backend)]
            if args.onnx:
                from dyhead_serve.export.onnx_export import export_onnx
                from dyhead_serve.runtime.onnxruntime_backend import OnnxRuntimeBackend

                folder = Path(tempfile.mkdtemp(prefix="mmdet_onnx_"))
                export_onnx(backend, folder)
                backends.append(("onnxruntime", OnnxRuntimeBackend(folder, device="cpu", intra_op_threads=2)))
            for name, runner in backends:
                predictor = make_predictor(runner)
                for image in photos:
                    start = time.perf_counter()
                    detections = predictor(photo(image))
                    seconds = time.perf_counter() - start
                    line = _differences(detections, reference(config, image, variant))
                    print(
                        f"{config:42s} {variant:7s} {image:9s} {name:11s} {line}  {seconds:.1f}", flush=True
                    )


if __name__ == "__main__":
    main()
