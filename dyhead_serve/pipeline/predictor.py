"""Images in, detections out: preprocessing, one network call per image, decoding, rescaling."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from dyhead_serve.modeling.dense_decoder import RawDetections
from dyhead_serve.pipeline.postprocess import Detections, to_original_image
from dyhead_serve.pipeline.preprocess import InputSpec, preprocess

__all__ = ["Decoder", "Predictor", "StageTimes"]

InferFn = Callable[[Tensor, Tensor], dict[str, Tensor]]


class Decoder(Protocol):
    """Turns a network's raw outputs into detections in resized-image coordinates (or, for
    rules that map boxes back before NMS, original-image ones: see :class:`RawDetections`)."""

    def __call__(
        self,
        outputs: dict[str, Tensor],
        padded_hw: tuple[int, int],
        image_sizes: Sequence[tuple[int, int]],
        score_threshold: float | None = None,
        original_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[RawDetections]: ...


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
        """Detect objects in one RGB uint8 image [H, W, 3]."""
        t0 = time.perf_counter()
        batch = preprocess([image], self.input_spec, self.device)
        t1 = time.perf_counter()
        outputs = self.infer(batch.images, batch.image_sizes_tensor())
        t2 = time.perf_counter()
        raw = self.decoder(
            outputs, batch.padded_hw, batch.image_sizes, score_threshold, original_sizes=batch.original_sizes
        )[0]
        detections = to_original_image(raw, batch.image_sizes[0], batch.original_sizes[0], self.class_names)
        t3 = time.perf_counter()
        self.last_times = StageTimes(preprocess=t1 - t0, network=t2 - t1, postprocess=t3 - t2)
        return detections
