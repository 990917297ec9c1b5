"""Detectron2's mapping of detections back to the original image (``detector_postprocess``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from dyhead_serve.decode.base import DecodedDetections
from dyhead_serve.decode.raw_outputs import RawOutputs

__all__ = ["RescaledAfterDecoding", "rescale_to_original"]


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


class RescaledAfterDecoding:
    """The Detectron2 decoders' common last step: a subclass decodes into the resized image's
    pixels (:meth:`decode_resized`, Detectron2's decoder), and calling it maps those detections to
    the original image with :func:`rescale_to_original` (``detector_postprocess``)."""

    def decode_resized(
        self,
        outputs: RawOutputs,
        padded_hw: tuple[int, int],
        image_sizes: Sequence[tuple[int, int]],
        score_threshold: float | None = None,
    ) -> list[DecodedDetections]:
        raise NotImplementedError

    def __call__(
        self,
        outputs: RawOutputs,
        padded_hw: tuple[int, int],
        image_sizes: Sequence[tuple[int, int]],
        original_sizes: Sequence[tuple[int, int]],
        *,
        score_threshold: float | None = None,
    ) -> list[DecodedDetections]:
        """Decode a batch into original-image pixels (see :meth:`decode_resized` for the
        arguments; ``original_sizes``: (h, w) of each image before resizing)."""
        if len(original_sizes) != len(image_sizes):
            raise ValueError(f"got {len(original_sizes)} original sizes for {len(image_sizes)} images")
        return [
            rescale_to_original(d.boxes, d.scores, d.classes, image_size, original_size)
            for d, image_size, original_size in zip(
                self.decode_resized(outputs, padded_hw, image_sizes, score_threshold),
                image_sizes,
                original_sizes,
                strict=True,
            )
        ]
