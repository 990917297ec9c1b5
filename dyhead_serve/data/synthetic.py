"""A procedurally generated detection dataset: coloured shapes on textured backgrounds.

Six classes (:data:`SHAPE_CLASSES`) are drawn with PIL on gradient, stripe, checkerboard or
smooth-noise backgrounds, at sizes from about 6% to 55% of the shorter image edge, rotated, in
random colours that stand out from what lies under them, overlapping each other (a shape keeps at
least 60% of its pixels visible). Boxes are the exact extents of each shape's visible pixels.

Everything is drawn from ``numpy.random.default_rng((seed, split, index))``, so the same seed
gives byte-identical PNG and json files, and an image does not depend on how many others are
generated. The layout is COCO's::

    OUT_DIR/train/000001.png ...       OUT_DIR/annotations/instances_train.json
    OUT_DIR/val/000001.png ...         OUT_DIR/annotations/instances_val.json

The dataset catalog names ``synthetic_shapes_train`` and ``synthetic_shapes_val`` refer to the
split generated with :data:`BUILTIN_SYNTHETIC` into the cache folder (``$DYHEAD_SERVE_CACHE`` or
``~/.cache/dyhead-serve``), generated on first use.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from dyhead_serve.checkpoint.cache import cache_dir, cache_folder

__all__ = [
    "BUILTIN_SYNTHETIC",
    "SHAPE_CLASSES",
    "SYNTHETIC_SPLITS",
    "SyntheticDatasetPaths",
    "SyntheticSpec",
    "builtin_synthetic_paths",
    "ensure_builtin_synthetic_dataset",
    "generate_synthetic_dataset",
    "render_image",
]

logger = logging.getLogger(__name__)

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")

# Bumped whenever the drawing changes, so a cache of an older version is never reused.
GENERATOR_VERSION = 1

_SPLIT_CODES = {"train": 0, "val": 1}
_MAX_OBJECTS = 6
_MIN_VISIBLE_FRACTION = 0.6
_MIN_CONTRAST = 100.0

# An object: (class index, [x1, y1, x2, y2] in pixel edges, visible pixel count).
SyntheticObject = tuple[int, list[float], int]


@dataclass(frozen=True)
class SyntheticSpec:
    """How large a generated dataset is: image counts, longer image edge, seed."""

    num_train: int
    num_val: int
    image_size: int
    seed: int

    @property
    def folder_name(self) -> str:
        return (
            f"synthetic_shapes_v{GENERATOR_VERSION}_{self.num_train}_{self.num_val}"
            f"_{self.image_size}px_seed{self.seed}"
        )


# The dataset behind the catalog names synthetic_shapes_train / synthetic_shapes_val.
BUILTIN_SYNTHETIC = SyntheticSpec(num_train=2000, num_val=200, image_size=320, seed=0)
SYNTHETIC_SPLITS: dict[str, str] = {"synthetic_shapes_train": "train", "synthetic_shapes_val": "val"}


@dataclass(frozen=True)
class SyntheticDatasetPaths:
    """Where a generated dataset's files are."""

    root: Path

    def json_file(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{split}.json"

    def image_root(self, split: str) -> Path:
        return self.root / split

    def exists(self) -> bool:
        return all(self.json_file(split).is_file() for split in _SPLIT_CODES)


# -- drawing --------------------------------------------------------------------------------


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3).astype(np.float32)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A float32 [H, W, 3] texture: gradient, stripes, checkerboard or smooth noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = _colour(rng), _colour(rng)
    kind = int(rng.integers(4))
    angle = rng.uniform(0, math.pi)
    along = xx * math.cos(angle) + yy * math.sin(angle)
    if kind == 0:  # linear gradient
        t = (along - along.min()) / max(float(along.max() - along.min()), 1.0)
    elif kind == 1:  # stripes, hard or soft
        wave = np.sin(along * (2 * math.pi / rng.uniform(6, 40)))
        t = (wave > 0).astype(np.float32) if rng.random() < 0.5 else 0.5 + 0.5 * wave
    elif kind == 2:  # checkerboard
        cell = rng.uniform(8, 48)
        t = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2).astype(np.float32)
    else:  # smooth noise: a coarse random grid, bilinearly upsampled
        step = int(rng.integers(12, 48))
        coarse = rng.uniform(0, 255, size=(height // step + 2, width // step + 2, 3)).astype(np.uint8)
        smooth = Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(smooth, dtype=np.float32) * 0.5 + c0 * 0.5
    return c0 * (1 - t[..., None]) + c1 * t[..., None]


def _star(radius: float, inner_ratio: float, angle: float, cx: float, cy: float) -> list[tuple[float, float]]:
    points = []
    for i in range(10):
        r = radius if i % 2 == 0 else radius * inner_ratio
        a = angle + i * math.pi / 5
        points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return points


def _rotated(
    points: list[tuple[float, float]], angle: float, cx: float, cy: float
) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _shape_mask(
    rng: np.random.Generator, class_index: int, radius: float, cx: float, cy: float, size: tuple[int, int]
) -> np.ndarray:
    """bool [H, W]: the pixels of one shape of circumscribed radius ``radius`` centred at (cx, cy)."""
    width, height = size
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    angle = rng.uniform(0, 2 * math.pi)
    name = SHAPE_CLASSES[class_index]
    if name == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
    elif name == "ring":
        inner = radius * rng.uniform(0.45, 0.65)
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    elif name == "square":
        half = radius / math.sqrt(2)
        corners = [(-half, -half), (half, -half), (half, half), (-half, half)]
        draw.polygon(_rotated(corners, angle, cx, cy), fill=255)
    elif name == "triangle":
        corners = [
            (radius * math.cos(k * 2 * math.pi / 3), radius * math.sin(k * 2 * math.pi / 3)) for k in range(3)
        ]
        draw.polygon(_rotated(corners, angle, cx, cy), fill=255)
    elif name == "star":
        draw.polygon(_star(radius, rng.uniform(0.38, 0.5), angle, cx, cy), fill=255)
    else:  # cross: a plus sign whose arms reach the circumscribed circle
        arm = radius * rng.uniform(0.28, 0.4)
        reach = math.sqrt(max(radius**2 - arm**2, 0.0))
        outline = [
            (-arm, -reach), (arm, -reach), (arm, -arm), (reach, -arm), (reach, arm), (arm, arm),
            (arm, reach), (-arm, reach), (-arm, arm), (-reach, arm), (-reach, -arm), (-arm, -arm),
        ]  # fmt: skip
        draw.polygon(_rotated(outline, angle, cx, cy), fill=255)
    return np.asarray(mask) > 0


def render_image(
    rng: np.random.Generator, width: int, height: int
) -> tuple[np.ndarray, list[SyntheticObject]]:
    """Draw one image and its objects.

    Returns:
        (image, objects): RGB uint8 [height, width, 3], and per object (class index,
        [x1, y1, x2, y2] of its visible pixels in pixel-edge coordinates, visible pixel count).
    """
    image = _background(rng, height, width)
    owner = np.full((height, width), -1, dtype=np.int16)  # index of the object seen at each pixel
    full_areas: list[int] = []
    classes: list[int] = []
    short = min(width, height)
    min_radius, max_radius = max(6.0, 0.03 * short), 0.275 * short
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(int(rng.integers(1, _MAX_OBJECTS + 1))):
        class_index = int(rng.integers(len(SHAPE_CLASSES)))
        for _attempt in range(20):
            radius = math.exp(rng.uniform(math.log(min_radius), math.log(max_radius)))
            cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
            mask = _shape_mask(rng, class_index, radius, cx, cy, (width, height))
            area = int(mask.sum())
            if area >= 16 and _keeps_others_visible(owner, mask, full_areas):
                break
        else:
            continue  # no room left for this one
        colour = _contrasting_colour(rng, image[mask].mean(axis=0))
        # a linear shading across the shape, so that it is not a flat colour
        strength, direction = rng.uniform(-30, 30), rng.uniform(0, 2 * math.pi)
        along = (xx[mask] - cx) * math.cos(direction) + (yy[mask] - cy) * math.sin(direction)
        image[mask] = colour + (strength * along / radius)[:, None]
        owner[mask] = len(classes)
        full_areas.append(area)
        classes.append(class_index)
    if rng.random() < 0.4:  # sensor-like noise on some images
        image += rng.normal(0, rng.uniform(1.5, 5), size=image.shape).astype(np.float32)
    objects: list[SyntheticObject] = []
    for index, class_index in enumerate(classes):
        ys, xs = np.nonzero(owner == index)
        box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
        objects.append((class_index, box, len(xs)))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), objects


def _keeps_others_visible(owner: np.ndarray, mask: np.ndarray, full_areas: list[int]) -> bool:
    if not full_areas:
        return True
    visible = np.bincount(owner[owner >= 0], minlength=len(full_areas))
    covered = np.bincount(owner[mask & (owner >= 0)], minlength=len(full_areas))
    return bool(np.all(visible - covered >= _MIN_VISIBLE_FRACTION * np.asarray(full_areas)))


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    for _ in range(10):
        colour = _colour(rng)
        if float(np.linalg.norm(colour - under)) >= _MIN_CONTRAST:
            return colour
    return np.where(under < 128, 255.0, 0.0).astype(np.float32)


# -- writing --------------------------------------------------------------------------------


def _image_shape(rng: np.random.Generator, image_size: int) -> tuple[int, int]:
    """(width, height): square, landscape 4:3 or portrait 3:4, longer edge ``image_size``."""
    other = round(image_size * 0.75)
    return [(image_size, image_size), (image_size, other), (other, image_size)][int(rng.integers(3))]


def _write_split(out_dir: Path, split: str, count: int, image_size: int, seed: int) -> Path:
    image_dir = out_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(count):
        rng = np.random.default_rng((seed, _SPLIT_CODES[split], index))
        width, height = _image_shape(rng, image_size)
        pixels, objects = render_image(rng, width, height)
        image_id = index + 1
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(image_dir / file_name, format="PNG", compress_level=6)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for class_index, (x1, y1, x2, y2), area in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": class_index + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": float(area),
                    "iscrowd": 0,
                }
            )
        if (index + 1) % 500 == 0:
            logger.info("%s: %d / %d images", split, index + 1, count)
    coco = {
        "info": {
            "description": f"dyhead-serve synthetic shapes, {split} split",
            "version": str(GENERATOR_VERSION),
            "seed": seed,
        },
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPE_CLASSES)
        ],
    }
    json_file = out_dir / "annotations" / f"instances_{split}.json"
    json_file.parent.mkdir(parents=True, exist_ok=True)
    json_file.write_text(json.dumps(coco), encoding="utf-8")
    return json_file


def generate_synthetic_dataset(
    out_dir: str | os.PathLike[str], num_train: int, num_val: int, image_size: int = 320, seed: int = 0
) -> SyntheticDatasetPaths:
    """Write a train and a val split of the shapes dataset under ``out_dir`` (see the module docstring).

    Args:
        out_dir: the folder to write into (created if needed).
        num_train, num_val: number of images per split (0 writes an empty split).
        image_size: longer edge of every image, in pixels (at least 64).
        seed: the same seed gives byte-identical files.

    Returns:
        The paths of the json files and image folders.
    """
    if num_train < 0 or num_val < 0:
        raise ValueError(f"image counts must be >= 0, got num_train={num_train}, num_val={num_val}")
    if image_size < 64:
        raise ValueError(f"image_size must be at least 64 pixels, got {image_size}")
    paths = SyntheticDatasetPaths(Path(out_dir))
    logger.info("generating %d + %d synthetic images into %s", num_train, num_val, paths.root)
    for split, count in (("train", num_train), ("val", num_val)):
        _write_split(paths.root, split, count, image_size, seed)
    return paths


def builtin_synthetic_paths() -> SyntheticDatasetPaths:
    """Where the builtin synthetic dataset lives (generated or not)."""
    return SyntheticDatasetPaths(cache_dir() / "datasets" / BUILTIN_SYNTHETIC.folder_name)


def ensure_builtin_synthetic_dataset() -> SyntheticDatasetPaths:
    """Generate the builtin synthetic dataset unless it is in the cache; return its paths.

    Generation writes a private folder and renames it into place, so concurrent processes
    (DDP ranks) never see half a dataset; the slower one discards its copy.
    """
    paths = builtin_synthetic_paths()
    if paths.exists():
        return paths
    cache_folder("datasets")  # a clear error when the cache cannot be written
    spec = BUILTIN_SYNTHETIC
    scratch = paths.root.with_name(f".{paths.root.name}.partial-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    generate_synthetic_dataset(scratch, spec.num_train, spec.num_val, spec.image_size, spec.seed)
    try:
        scratch.rename(paths.root)
    except OSError:
        shutil.rmtree(scratch, ignore_errors=True)  # another process finished first
    if not paths.exists():
        raise RuntimeError(f"{paths.root} exists but is incomplete; delete it to regenerate the dataset")
    return paths
