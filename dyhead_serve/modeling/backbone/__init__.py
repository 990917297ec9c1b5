"""Backbones: Detectron2-compatible ResNet and the official DynamicHead Swin Transformer."""

from dyhead_serve.modeling.backbone.base import Backbone
from dyhead_serve.modeling.backbone.resnet import ResNet, build_resnet
from dyhead_serve.modeling.backbone.swin import SwinTransformer, build_swin

__all__ = ["Backbone", "ResNet", "SwinTransformer", "build_resnet", "build_swin"]
