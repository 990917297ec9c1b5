"""The PyTorch backend: the detector module itself."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from dyhead_serve.data.coco_classes import COCO_CLASS_NAMES
from dyhead_serve.decode.base import Decoder
from dyhead_serve.pipeline.preprocess import InputSpec

if TYPE_CHECKING:
    from dyhead_serve.modeling.detector_protocol import Detector

__all__ = [
    "TorchBackend",
    "build_torch_backend",
    "class_names_for",
    "detector_backend",
    "input_spec_from_config",
]

logger = logging.getLogger(__name__)


def class_names_for(num_classes: int) -> list[str]:
    """COCO's names for 80-class models, ``class_<i>`` otherwise."""
    if num_classes == len(COCO_CLASS_NAMES):
        return list(COCO_CLASS_NAMES)
    return [f"class_{i}" for i in range(num_classes)]


def input_spec_from_config(cfg: Any, size_divisibility: int) -> InputSpec:
    """The test-time preprocessing a config describes; ``size_divisibility`` is the model's,
    used unless ``INPUT.SIZE_DIVISIBILITY`` sets one (mmdetection's ``pad_size_divisor``)."""
    return InputSpec(
        channel_order=cfg.INPUT.FORMAT,
        pixel_mean=tuple(float(v) for v in cfg.MODEL.PIXEL_MEAN),
        pixel_std=tuple(float(v) for v in cfg.MODEL.PIXEL_STD),
        min_size=int(cfg.INPUT.MIN_SIZE_TEST),
        max_size=int(cfg.INPUT.MAX_SIZE_TEST),
        size_divisibility=int(cfg.INPUT.SIZE_DIVISIBILITY) or size_divisibility,
        resize_rule=str(cfg.INPUT.RESIZE_RULE),
        resize_backend=str(cfg.INPUT.RESIZE_BACKEND),
    )


class TorchBackend:
    """Runs a detector ``nn.Module`` (eval mode, no autograd) on its device."""

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        decoder: Decoder,
        input_spec: InputSpec,
        class_names: list[str],
        model_name: str,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.decoder = decoder
        self.input_spec = input_spec
        self.class_names = class_names
        self.model_name = model_name
        self.precision = "fp32"

    @torch.inference_mode()
    def infer(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        outputs: dict[str, Tensor] = self.model(images.to(self.device), image_sizes.to(self.device))
        return outputs


def detector_backend(
    cfg: Any,
    model: Detector,
    model_name: str,
    class_names: list[str] | None = None,
    device: str | torch.device | None = None,
) -> TorchBackend:
    """A backend running ``model`` with the test-time preprocessing ``cfg`` describes, on
    ``device`` (default ``cfg.MODEL.DEVICE``); class names default to ``MODEL.CLASS_NAMES``, else
    :func:`class_names_for` the model's classes.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"a detector must be an nn.Module, got {type(model).__name__}")
    spec = input_spec_from_config(cfg, model.size_divisibility)
    if class_names is None:
        class_names = list(cfg.MODEL.CLASS_NAMES) or class_names_for(model.num_classes)
    return TorchBackend(model, model.decoder, spec, class_names, model_name, device or cfg.MODEL.DEVICE)


def build_torch_backend(
    cfg: Any, weights: str | Path | None, model_name: str, class_names: list[str] | None = None
) -> TorchBackend:
    """Build the detector ``cfg`` describes on ``cfg.MODEL.DEVICE`` and load ``weights`` strictly
    (random weights, with a warning, when None; see :func:`~dyhead_serve.modeling.build.load_model`),
    then :func:`detector_backend`."""
    from dyhead_serve.modeling.build import load_model

    return detector_backend(cfg, load_model(cfg, weights), model_name, class_names)
