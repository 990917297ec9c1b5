"""Images in, detections out: preprocessing, one network call per image, decoding, labelling.

The two steps around the network, :func:`prepare_image` and :func:`detections_from_outputs`, are
what every path runs: ``dyhead-serve predict`` and ``eval`` through :class:`Predictor`, the
server around its batcher. So the AP that eval reports measures what the server answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from dyhead_serve.decode.base import DecodedDetections, Decoder
from dyhead_serve.errors import UserError
from dyhead_serve.pipeline.postprocess import Detections, label_detections
from dyhead_serve.pipeline.preprocess import Batch, InputSpec, preprocess

__all__ = [
    "Predictor",
    "StageTimes",
    "UnsupportedImageSizeError",
    "detections_from_outputs",
    "prepare_image",
]

InferFn = Callable[[Tensor, Tensor], dict[str, Tensor]]


class UnsupportedImageSizeError(UserError, ValueError):
    """The image cannot be resized for this model (so elongated that an edge would become 0)."""


def prepare_image(image: np.ndarray, spec: InputSpec, device: str | torch.device = "cpu") -> Batch:
    """First step: one RGB uint8 image [H, W, 3] -> a normalised, padded batch of one.

    Raises:
        UnsupportedImageSizeError: an edge of the resized image would be 0 pixels.
        ValueError: not an RGB uint8 array.
    """
    height, width = int(image.shape[0]), int(image.shape[1])
    if min(spec.resized_shape(height, width)) < 1:
        raise UnsupportedImageSizeError(f"a {width}x{height} image is too elongated to resize for this model")
    return preprocess([image], spec, device)


def detections_from_outputs(
    outputs: dict[str, Tensor],
    batch: Batch,
    decoder: Decoder,
    class_names: Sequence[str],
    score_threshold: float | None = None,
) -> Detections:
    """Last step: the network's raw outputs for ``batch`` (one image) -> detections in the
    original image's pixels, best first.

    ``score_threshold`` is the minimum score returned: the decoder keeps the candidates its own
    config's threshold keeps (so detections stay exactly the framework's), and those scoring below
    ``score_threshold`` are then dropped. (Handing it to the decoder instead would move the
    candidate threshold, which ATSS applies to class probabilities before centerness: scores
    below it came back.)"""
    decoded = decoder(outputs, batch.padded_hw, batch.image_sizes, batch.original_sizes)[0]
    if score_threshold is not None:
        keep = decoded.scores >= score_threshold
        decoded = DecodedDetections(decoded.boxes[keep], decoded.scores[keep], decoded.classes[keep])
    return label_detections(decoded, batch.original_sizes[0], class_names)


@dataclass
class StageTimes:
    """Wall-clock seconds spent in each stage of the last call."""

    preprocess: float = 0.0
    network: float = 0.0
    postprocess: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


class Predictor:
    """Runs a detector on single images exactly as Detectron2's ``DefaultPredictor`` does.

    Each image is resized, normalised and padded on its own (GroupNorm and the global poolings of
    DyHead see the padding, so batching images of different sizes would change the results).

    Args:
        infer: the network: (Tensor[N, 3, H, W], image sizes Tensor[N, 2]) -> raw outputs
            (a detector module or a runtime backend's ``infer``).
        decoder: turns raw outputs into detections.
        input_spec: the preprocessing the network was trained with.
        class_names: name of each class index.
        device: where inputs are placed for ``infer``.
    """

    def __init__(
        self,
        infer: InferFn,
        decoder: Decoder,
        input_spec: InputSpec,
        class_names: Sequence[str],
        device: str | torch.device = "cpu",
    ) -> None:
        self.infer = infer
        self.decoder = decoder
        self.input_spec = input_spec
        self.class_names = list(class_names)
        self.device = torch.device(device)
        self.last_times = StageTimes()

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, score_threshold: float | None = None) -> Detections:
        """Detect objects in one RGB uint8 image [H, W, 3] (see :func:`prepare_image` for the
        errors)."""
        t0 = time.perf_counter()
        batch = prepare_image(image, self.input_spec, self.device)
        t1 = time.perf_counter()
        outputs = self.infer(batch.images, batch.image_sizes_tensor())
        t2 = time.perf_counter()
        detections = detections_from_outputs(outputs, batch, self.decoder, self.class_names, score_threshold)
        t3 = time.perf_counter()
        self.last_times = StageTimes(preprocess=t1 - t0, network=t2 - t1, postprocess=t3 - t2)
        return detections
