"""The PyTorch backend: the detector module itself."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dyhead_serve.data.coco_classes import COCO_CLASS_NAMES
from dyhead_serve.decode.base import Decoder
from dyhead_serve.pipeline.preprocess import InputSpec

__all__ = ["TorchBackend", "build_torch_backend", "class_names_for", "input_spec_from_config"]

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


def build_torch_backend(
    cfg: Any, weights: str | Path | None, model_name: str, class_names: list[str] | None = None
) -> TorchBackend:
    """Build the detector ``cfg`` describes on ``cfg.MODEL.DEVICE`` and load ``weights`` strictly
    (random weights, with a warning, when None); an mmdetection-layout model
    (``MODEL.LAYOUT = "mmdet"``) reads the checkpoint's mmdetection names."""
    from dyhead_serve.checkpoint import load_state_dict
    from dyhead_serve.modeling.build import build_model
    from dyhead_serve.modeling.mmdet_keys import mmdet_key_map

    model = build_model(cfg)
    if weights is not None:
        key_map = mmdet_key_map(model.state_dict()) if cfg.MODEL.LAYOUT == "mmdet" else None
        load_state_dict(model, str(weights), strict=True, key_map=key_map)
    else:
        logger.warning("no weights given: the detector has random weights")
    spec = input_spec_from_config(cfg, model.size_divisibility)
    if class_names is None:
        class_names = list(cfg.MODEL.CLASS_NAMES) or class_names_for(model.num_classes)
    names = class_names
    return TorchBackend(model, model.decoder, spec, names, model_name, cfg.MODEL.DEVICE)
