"""CPU latency of ``predict`` for the DyHead models, split by stage.

Prints a table with the median and p90 of each stage (preprocess, backbone+FPN, DyHead tower,
head (dense head, or RPN + ROI heads), post-process) and of the whole call, for one image
resized to 800x1333 (a 600x1000 synthetic photograph-like image), torch fp32 on the CPU.

    python benchmarks/cpu_latency.py                       # the four official models, random weights
    python benchmarks/cpu_latency.py --model dyhead_r50_retina_fpn_1x --weights w.pth --iters 10

Random weights change only the post-processing time (fewer candidates pass the score threshold);
pass --weights for a trained model's numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from environment import describe

from dyhead_serve.checkpoint import load_state_dict
from dyhead_serve.config import OFFICIAL_CONFIGS, load_config
from dyhead_serve.data.sample_image import synthetic_photo
from dyhead_serve.modeling.build import build_model
from dyhead_serve.pipeline.predictor import detections_from_outputs
from dyhead_serve.pipeline.preprocess import preprocess
from dyhead_serve.predict import class_names_for, input_spec_from_config

STAGES = ("preprocess", "backbone+fpn", "dyhead", "head", "postprocess", "total")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


class StageClock:
    """Marks the end of the FPN (``backbone.backbone``) and of the DyHead tower (``backbone``) with
    forward hooks, so any detector's own ``forward`` is timed without re-implementing it."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.marks: dict[str, float] = {}
        model.backbone.backbone.register_forward_hook(lambda *_: self._mark("fpn"))
        model.backbone.register_forward_hook(lambda *_: self._mark("dyhead"))

    def _mark(self, name: str) -> None:
        self.marks[name] = time.perf_counter()


@torch.inference_mode()
def run_once(model, clock: StageClock, spec, image, class_names) -> dict[str, float]:
    t0 = time.perf_counter()
    batch = preprocess([image], spec)
    t1 = time.perf_counter()
    outputs = model(batch.images, batch.image_sizes_tensor())
    t2 = time.perf_counter()
    detections_from_outputs(outputs, batch, model.decoder, class_names)
    t3 = time.perf_counter()
    fpn_end, dyhead_end = clock.marks["fpn"], clock.marks["dyhead"]
    return {
        "preprocess": t1 - t0,
        "backbone+fpn": fpn_end - t1,
        "dyhead": dyhead_end - fpn_end,
        "head": t2 - dyhead_end,
        "postprocess": t3 - t2,
        "total": t3 - t0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="official config name or YAML path (repeatable; default: the R50 ATSS and Swin-T ATSS models)",
    )
    parser.add_argument("--weights", default=None, help="checkpoint for the (single) model")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations per model (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = args.model or list(OFFICIAL_CONFIGS)
    image = synthetic_photo(600, 1000)
    print(describe(torch.get_num_threads()))
    print("image 600x1000 -> 800x1333, fp32 CPU")
    print(f"{'model':32s} {'stage':14s} {'median ms':>10s} {'p90 ms':>10s} {'share':>7s}")
    for name in models:
        torch.manual_seed(0)
        cfg = load_config(name, overrides=["MODEL.DEVICE", "cpu"])
        model = build_model(cfg)
        if args.weights:
            load_state_dict(model, args.weights)
        spec = input_spec_from_config(cfg, model.size_divisibility)
        names = class_names_for(model.num_classes)
        clock = StageClock(model)
        for _ in range(args.warmup):
            run_once(model, clock, spec, image, names)
        runs = [run_once(model, clock, spec, image, names) for _ in range(args.iters)]
        total_median = statistics.median(r["total"] for r in runs)
        for stage in STAGES:
            values = [r[stage] * 1000 for r in runs]
            share = statistics.median(r[stage] for r in runs) / total_median
            median, p90 = statistics.median(values), percentile(values, 90)
            print(f"{name:32s} {stage:14s} {median:10.1f} {p90:10.1f} {share:7.1%}")


if __name__ == "__main__":
    main()
