"""Detectron2's mapping of detections back to the original image (``detector_postprocess``)."""

from __future__ import annotations

from torch import Tensor

from dyhead_serve.decode.base import DecodedDetections

__all__ = ["rescale_to_original"]


def rescale_to_original(
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    image_size: tuple[int, int],
    original_size: tuple[int, int],
) -> DecodedDetections:
    """Rescale boxes from the resized image to the original one, clip them to it and drop those
    left empty, as Detectron2 does after its decoders (in this order, with these float steps).

    Args:
        boxes: Tensor[K, 4] (x0, y0, x1, y1) in resized-image pixels.
        scores: Tensor[K].
        classes: Tensor[K] int64.
        image_size: (h, w) of the resized image.
        original_size: (h, w) of the original image.
    """
    out_h, out_w = original_size
    boxes = boxes.clone()
    boxes[:, 0::2] *= out_w / image_size[1]
    boxes[:, 1::2] *= out_h / image_size[0]
    boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=out_w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=out_h)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return DecodedDetections(boxes[keep], scores[keep], classes[keep])
