"""The interface every runtime backend implements."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from dyhead_serve.decode.base import Decoder
from dyhead_serve.errors import UserError
from dyhead_serve.pipeline.predictor import Predictor
from dyhead_serve.pipeline.preprocess import InputSpec

__all__ = ["Backend", "BackendError", "infer_in_chunks", "make_predictor"]


class BackendError(UserError, RuntimeError):
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


def infer_in_chunks(
    run: Callable[[Tensor, Tensor], dict[str, Tensor]], images: Tensor, image_sizes: Tensor, chunk: int
) -> dict[str, Tensor]:
    """``run`` on consecutive slices of at most ``chunk`` images, outputs concatenated along the
    batch: for networks that take batches up to a size (an engine's profile, a fixed-batch graph).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    if images.shape[0] <= chunk:
        return run(images, image_sizes)
    parts = [run(images[i : i + chunk], image_sizes[i : i + chunk]) for i in range(0, images.shape[0], chunk)]
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
