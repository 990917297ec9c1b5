"""Backbones: Detectron2-compatible ResNet (and, later, Swin-T)."""

from dyhead_serve.modeling.backbone.base import Backbone
from dyhead_serve.modeling.backbone.resnet import ResNet, build_resnet

__all__ = ["Backbone", "ResNet", "build_resnet"]
