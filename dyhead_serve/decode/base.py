"""What every decoder is: raw outputs in, detections in original-image pixels out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor

from dyhead_serve.decode.raw_outputs import RawOutputs

__all__ = ["DecodedDetections", "Decoder"]


@dataclass
class DecodedDetections:
    """Detections of one image in its original pixels, highest score first."""

    boxes: Tensor  # [K, 4] (x0, y0, x1, y1)
    scores: Tensor  # [K]
    classes: Tensor  # [K] int64


class Decoder(Protocol):
    """Turns a network's raw outputs into detections in the original image's pixels.

    Each decoder reproduces one implementation's rules (Detectron2's dense or R-CNN inference,
    mmdetection's ATSS), including where and how it maps boxes back to the original image, so
    every decoder hands the pipeline the same frame and the pipeline only attaches class names.
    A decoder is plain data (its spec), written to ``model.json`` with :meth:`to_dict` and read
    back with :func:`~dyhead_serve.decode.from_dict.decoder_from_dict`.
    """

    @property
    def num_classes(self) -> int:
        """Number of object classes (without background)."""
        ...

    def __call__(
        self,
        outputs: RawOutputs,
        padded_hw: tuple[int, int],
        image_sizes: Sequence[tuple[int, int]],
        original_sizes: Sequence[tuple[int, int]],
        *,
        score_threshold: float | None = None,
    ) -> list[DecodedDetections]:
        """Decode a batch.

        Args:
            outputs: the network's raw outputs for N images.
            padded_hw: (H, W) of the network input.
            image_sizes: (h, w) of each resized image before padding.
            original_sizes: (h, w) of each image before resizing: the frame of the result.
            score_threshold: overrides the spec's threshold when given.
        """
        ...

    def to_dict(self) -> dict[str, Any]:
        """``{"type": ..., "spec": {...}}``: the ``decoder`` entry of ``model.json``."""
        ...

    def graph_outputs(self) -> dict[str, Sequence[int] | None]:
        """The raw outputs this decoder reads, each with the sizes its last dimension may have
        (None: any), to check them against the graph's recorded outputs."""
        ...
