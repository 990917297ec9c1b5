"""The interface every runtime backend implements."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from dyhead_serve.pipeline.predictor import Decoder, Predictor
from dyhead_serve.pipeline.preprocess import InputSpec

__all__ = ["Backend", "BackendError", "make_predictor"]


class BackendError(RuntimeError):
    """A model cannot be loaded or run by the requested backend."""


class Backend(Protocol):
    """Runs a detector's network: normalised, padded images in, raw outputs out.

    A backend sees tensors only (never HTTP, bytes or thresholds). Its outputs are the same
    named tensors whichever backend runs (``logits`` [N, R, C], ``deltas`` [N, R, 4],
    ``centerness`` [N, R] for dense detectors), so one :attr:`decoder` serves them all.
    """

    name: str  # "torch" | "onnxruntime" | "tensorrt"
    model_name: str
    input_spec: InputSpec
    class_names: list[str]
    decoder: Decoder
    device: torch.device
    precision: str  # "fp32" | "fp16"

    def infer(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        """Tensor[N, 3, H, W] float32 and Tensor[N, 2] int64 (h, w) -> raw outputs on CPU or device."""
        ...


def make_predictor(backend: Backend) -> Predictor:
    """A :class:`Predictor` running ``backend``."""
    return Predictor(backend.infer, backend.decoder, backend.input_spec, backend.class_names, backend.device)
