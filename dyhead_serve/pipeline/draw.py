"""Drawing detections onto an image."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dyhead_serve.pipeline.postprocess import Detections

__all__ = ["class_color", "draw_detections"]


def class_color(class_id: int) -> tuple[int, int, int]:
    """A stable, well separated colour per class (golden-ratio hue steps)."""
    hue = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: np.ndarray, detections: Detections, min_score: float = 0.0) -> Image.Image:
    """Draw boxes with ``label score`` captions on an RGB uint8 image [H, W, 3].

    Only detections scoring at least ``min_score`` are drawn, the highest-scoring last (on top).
    """
    canvas = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    width = max(2, round(min(canvas.size) / 300))
    drawn = [
        item
        for item in zip(
            detections.boxes.tolist(), detections.scores.tolist(), detections.classes.tolist(),
            detections.labels, strict=True,
        )
        if item[1] >= min_score
    ]  # fmt: skip
    for box, score, cls, label in sorted(drawn, key=lambda item: item[1]):
        color = class_color(int(cls))
        x1, y1, x2, y2 = box
        draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
        caption = f"{label} {score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), caption, font=font)
        text_h = bottom - top
        y_text = y1 - text_h - 2 if y1 - text_h - 2 >= 0 else y1
        draw.rectangle([x1, y_text, x1 + (right - left) + 4, y_text + text_h + 2], fill=color)
        draw.text((x1 + 2, y_text), caption, fill=(0, 0, 0), font=font)
    return canvas
