"""A tiny DyHead detector config and in-memory synthetic samples for fast training tests."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from dyhead_serve.cli.main import build_parser
from dyhead_serve.cli.run import run_command
from dyhead_serve.config import CfgNode, load_config
from dyhead_serve.data.mapper import TrainingSample
from dyhead_serve.data.synthetic import render_image

IMAGE_SIZE = 128
NUM_CLASSES = 6

# ResNet-18 with a 32-channel FPN and one DyHead block; anchors scaled to 128 px images.
TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.WEIGHTS", "",
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.DYHEAD.NUM_CONVS", "1",
    "MODEL.DYHEAD.CHANNELS", "32",
    "MODEL.ATSS.NUM_CLASSES", str(NUM_CLASSES),
    "MODEL.RETINANET.NUM_CLASSES", str(NUM_CLASSES),
    "MODEL.RETINANET.NUM_CONVS", "1",
    "MODEL.ANCHOR_GENERATOR.SIZES", "[[16], [32], [64], [128], [256]]",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.BASE_LR", "0.01",
    "SOLVER.WARMUP_ITERS", "2",
    "SOLVER.STEPS", "()",
    "SOLVER.CHECKPOINT_PERIOD", "1000",
    "DATALOADER.NUM_WORKERS", "0",
    "DATASETS.TEST", "()",
]  # fmt: skip


def tiny_config(output_dir: Path, *overrides: str, meta: str = "dyhead_r50_atss_fpn_1x") -> CfgNode:
    """The tiny variant of an official config, writing to ``output_dir``."""
    return load_config(meta, overrides=[*TINY, "OUTPUT_DIR", str(output_dir), *overrides])


def synthetic_samples(count: int, seed: int = 0, image_format: str = "BGR") -> list[TrainingSample]:
    """``count`` shape images of IMAGE_SIZE x IMAGE_SIZE as the training mapper returns them."""
    samples: list[TrainingSample] = []
    for index in range(count):
        rgb, objects = render_image(np.random.default_rng((seed, index)), IMAGE_SIZE, IMAGE_SIZE)
        image = rgb[:, :, ::-1] if image_format == "BGR" else rgb
        samples.append(
            {
                "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float(),
                "height": IMAGE_SIZE,
                "width": IMAGE_SIZE,
                "image_id": index,
                "file_name": f"in-memory-{index}",
                "gt_boxes": torch.tensor([box for _, box, _ in objects], dtype=torch.float32).reshape(-1, 4),
                "gt_classes": torch.tensor([c for c, _, _ in objects], dtype=torch.int64),
            }
        )
    return samples


def cycle_batches(samples: Sequence[TrainingSample], batch_size: int) -> Iterator[list[TrainingSample]]:
    """Batches of ``batch_size`` consecutive samples, wrapping around, forever."""
    start = 0
    while True:
        yield [samples[(start + i) % len(samples)] for i in range(batch_size)]
        start += batch_size


def train_command_args(config: str, shapes: Path, output_dir: Path, *extra: str) -> list[str]:
    """``dyhead-serve train`` arguments: the tiny variant of ``config`` on a generated shapes
    dataset (``shapes``: its root), registered as ``shapes_train`` / ``shapes_val``; ``extra``
    overrides come last."""
    train, val = (
        shapes / "annotations" / "instances_train.json",
        shapes / "annotations" / "instances_val.json",
    )
    pairs = zip(TINY[::2], TINY[1::2], strict=True)
    overrides = [item for key, value in pairs if key != "DATASETS.TEST" for item in (key, value)]
    return [
        "--config", config,
        "--device", "cpu",
        "--register-coco", "shapes_train", str(train), str(shapes / "train"),
        "--register-coco", "shapes_val", str(val), str(shapes / "val"),
        *overrides,
        "DATASETS.TRAIN", "('shapes_train',)", "DATASETS.TEST", "('shapes_val',)",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
        "SEED", "3", "OUTPUT_DIR", str(output_dir), *extra,
    ]  # fmt: skip


def parse_train_args(argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed as ``dyhead-serve train`` parses it."""
    return build_parser().parse_args(["train", *argv])


def run_train(args: argparse.Namespace) -> int:
    """Run parsed ``train`` arguments as ``dyhead-serve`` does: a user's mistake is ``error: ...``
    on stderr and exit status 2 (the one mapping every command goes through)."""
    return run_command(args, logging.INFO)
