"""Training losses of the dense detectors, from their Detectron2-style config keys."""

from __future__ import annotations

from typing import Any

from dyhead_serve.decode.box_coding import BoxCoder
from dyhead_serve.modeling.losses.atss_loss import ATSSLoss
from dyhead_serve.modeling.losses.retinanet_loss import RetinaNetLoss
from dyhead_serve.modeling.matcher import Matcher

__all__ = ["build_atss_loss", "build_retinanet_loss"]

Cfg = Any  # dyhead_serve.config.CfgNode


def build_atss_loss(cfg: Cfg, num_anchors_per_location: int) -> ATSSLoss:
    """:class:`ATSSLoss` from ``MODEL.ATSS`` (``TOPK``, ``FOCAL_LOSS_*``, ``REG_LOSS_WEIGHT``,
    ``BBOX_REG_WEIGHTS``)."""
    c = cfg.MODEL.ATSS
    return ATSSLoss(
        BoxCoder(c.BBOX_REG_WEIGHTS),
        topk=int(c.TOPK),
        num_anchors_per_location=num_anchors_per_location,
        focal_alpha=float(c.FOCAL_LOSS_ALPHA),
        focal_gamma=float(c.FOCAL_LOSS_GAMMA),
        reg_loss_weight=float(c.REG_LOSS_WEIGHT),
    )


def build_retinanet_loss(cfg: Cfg) -> RetinaNetLoss:
    """:class:`RetinaNetLoss` from ``MODEL.RETINANET`` (``IOU_THRESHOLDS``, ``IOU_LABELS``,
    ``FOCAL_LOSS_*``, ``SMOOTH_L1_LOSS_BETA``, ``BBOX_REG_LOSS_TYPE``, ``BBOX_REG_WEIGHTS``)."""
    c = cfg.MODEL.RETINANET
    return RetinaNetLoss(
        num_classes=int(c.NUM_CLASSES),
        box_coder=BoxCoder(c.BBOX_REG_WEIGHTS),
        matcher=Matcher(c.IOU_THRESHOLDS, c.IOU_LABELS, allow_low_quality_matches=True),
        focal_alpha=float(c.FOCAL_LOSS_ALPHA),
        focal_gamma=float(c.FOCAL_LOSS_GAMMA),
        smooth_l1_beta=float(c.SMOOTH_L1_LOSS_BETA),
        box_reg_loss_type=str(c.BBOX_REG_LOSS_TYPE),
    )
