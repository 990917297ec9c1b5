"""Build detectors from a Detectron2-style config: the one table of named builders.

Each builder reads the few config keys its module needs and passes them as plain arguments.
:func:`build_model` is the one way to build a detector (the runtime's torch backend, eval,
training and the benchmarks use it); :func:`load_model` also loads its weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dyhead_serve.checkpoint import load_state_dict
from dyhead_serve.checkpoint.mmdet_keys import mmdet_key_map
from dyhead_serve.config.errors import ConfigError
from dyhead_serve.decode.anchors import broadcast_per_level
from dyhead_serve.decode.detectron2_dense import Detectron2DenseDecoder, Detectron2DenseSpec
from dyhead_serve.decode.mmdet_atss import MMDetATSSDecoder, MMDetATSSSpec
from dyhead_serve.modeling.backbone.base import Backbone
from dyhead_serve.modeling.backbone.resnet import build_resnet
from dyhead_serve.modeling.backbone.swin import build_swin
from dyhead_serve.modeling.detector import DenseDetector
from dyhead_serve.modeling.detector_protocol import Detector
from dyhead_serve.modeling.dyhead import DyHeadBackbone
from dyhead_serve.modeling.dyrelu import check_layout
from dyhead_serve.modeling.fpn import FPN, LastLevelMaxPool, LastLevelP6P7
from dyhead_serve.modeling.heads import ATSSHead, RetinaNetHead
from dyhead_serve.modeling.losses import build_atss_loss, build_retinanet_loss
from dyhead_serve.modeling.rcnn import GeneralizedRCNN, build_rcnn
from dyhead_serve.ops.dcn_kernel import get_dcn_kernel

__all__ = ["BACKBONES", "META_ARCHITECTURES", "build_backbone", "build_model", "load_model"]

logger = logging.getLogger(__name__)

Cfg = Any  # dyhead_serve.config.CfgNode; attribute access to Detectron2-style keys


def _resnet(cfg: Cfg) -> Backbone:
    r = cfg.MODEL.RESNETS
    return build_resnet(
        depth=r.DEPTH,
        out_features=r.OUT_FEATURES,
        in_channels=len(cfg.MODEL.PIXEL_MEAN),
        norm=r.NORM,
        stem_out_channels=r.STEM_OUT_CHANNELS,
        res2_out_channels=r.RES2_OUT_CHANNELS,
        num_groups=r.NUM_GROUPS,
        width_per_group=r.WIDTH_PER_GROUP,
        stride_in_1x1=r.STRIDE_IN_1X1,
        res5_dilation=r.RES5_DILATION,
        deform_on_per_stage=r.DEFORM_ON_PER_STAGE,
        deform_modulated=r.DEFORM_MODULATED,
        deform_num_groups=r.DEFORM_NUM_GROUPS,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )


def _swin(cfg: Cfg) -> Backbone:
    s = cfg.MODEL.SWINT
    return build_swin(
        out_features=s.OUT_FEATURES,
        in_channels=len(cfg.MODEL.PIXEL_MEAN),
        embed_dim=s.EMBED_DIM,
        depths=s.DEPTHS,
        num_heads=s.NUM_HEADS,
        window_size=s.WINDOW_SIZE,
        mlp_ratio=s.MLP_RATIO,
        drop_path_rate=s.DROP_PATH_RATE,
        ape=s.APE,
        out_norm=s.OUT_NORM,
        frozen_stages=cfg.MODEL.BACKBONE.FREEZE_AT,
        # mmdetection's Swin merges patches with nn.Unfold, in another channel order.
        merge_order="unfold" if _layout(cfg) == "mmdet" else "official",
    )


def _layout(cfg: Cfg) -> str:
    return check_layout(cfg.MODEL.LAYOUT)


def _fpn_dyhead(cfg: Cfg, bottom_up: Backbone, p6p7: bool) -> Backbone:
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    top_block: LastLevelP6P7 | LastLevelMaxPool
    if p6p7:
        top_block = LastLevelP6P7(
            out_channels, out_channels, "p5", relu_before_p7=cfg.MODEL.FPN.RELU_BEFORE_P7
        )
    else:
        top_block = LastLevelMaxPool()
    fpn = FPN(
        bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
    return DyHeadBackbone(
        fpn, num_blocks=cfg.MODEL.DYHEAD.NUM_CONVS, channels=cfg.MODEL.DYHEAD.CHANNELS, layout=_layout(cfg)
    )


BACKBONES: dict[str, Callable[[Cfg], Backbone]] = {
    "build_retinanet_resnet_fpn_dyhead_backbone": lambda cfg: _fpn_dyhead(cfg, _resnet(cfg), p6p7=True),
    "build_resnet_fpn_dyhead_backbone": lambda cfg: _fpn_dyhead(cfg, _resnet(cfg), p6p7=False),
    "build_retinanet_swint_fpn_dyhead_backbone": lambda cfg: _fpn_dyhead(cfg, _swin(cfg), p6p7=True),
    "build_swint_fpn_dyhead_backbone": lambda cfg: _fpn_dyhead(cfg, _swin(cfg), p6p7=False),
}


def build_backbone(cfg: Cfg) -> Backbone:
    """The backbone named by ``MODEL.BACKBONE.NAME``."""
    name = cfg.MODEL.BACKBONE.NAME
    if name not in BACKBONES:
        raise ConfigError(f"MODEL.BACKBONE.NAME {name!r} is not supported; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](cfg)


def _anchor_params(cfg: Cfg, num_levels: int) -> tuple[list[list[float]], list[list[float]]]:
    a = cfg.MODEL.ANCHOR_GENERATOR
    if a.NAME != "DefaultAnchorGenerator":
        raise ConfigError(f"MODEL.ANCHOR_GENERATOR.NAME {a.NAME!r} is not supported")
    return (
        broadcast_per_level(a.SIZES, num_levels, "SIZES"),
        broadcast_per_level(a.ASPECT_RATIOS, num_levels, "ASPECT_RATIOS"),
    )


def _strides(backbone: Backbone, in_features: list[str]) -> list[int]:
    shapes = backbone.output_shape()
    missing = [f for f in in_features if f not in shapes]
    if missing:
        raise ConfigError(f"head input(s) {missing} are not backbone outputs {list(shapes)}")
    return [shapes[f].stride for f in in_features]


def _in_channels(backbone: Backbone, in_features: list[str]) -> int:
    channels = {backbone.output_shape()[f].channels for f in in_features}
    if len(channels) != 1:
        raise ConfigError(f"every head input must have the same channels, got {channels}")
    return channels.pop()


@dataclass
class _DenseParts:
    """What the ATSS and RetinaNet builders share: backbone, inputs, anchors."""

    backbone: Backbone
    in_features: list[str]
    strides: list[int]
    sizes: list[list[float]]
    ratios: list[list[float]]
    in_channels: int
    num_anchors: int


def _dense_parts(cfg: Cfg, in_features: list[str]) -> _DenseParts:
    backbone = build_backbone(cfg)
    strides = _strides(backbone, in_features)
    sizes, ratios = _anchor_params(cfg, len(in_features))
    num_anchors = {len(s) * len(r) for s, r in zip(sizes, ratios, strict=True)}
    if len(num_anchors) != 1:
        raise ConfigError("every level needs the same number of anchors per location")
    return _DenseParts(
        backbone, in_features, strides, sizes, ratios, _in_channels(backbone, in_features), num_anchors.pop()
    )


def _dense_decoder(
    cfg: Cfg, parts: _DenseParts, kind: str, box_weights: Sequence[float], **test: float
) -> Detectron2DenseDecoder | MMDetATSSDecoder:
    """The decoder of the rules ``TEST.POSTPROCESS`` names: Detectron2's or mmdetection's (ATSS)."""
    rules = str(cfg.TEST.POSTPROCESS)
    if rules not in ("detectron2", "mmdet"):
        raise ValueError(f"unknown dense decoder rules {rules!r} (TEST.POSTPROCESS); use detectron2 or mmdet")
    if rules == "mmdet" and kind != "atss":
        raise ValueError("the mmdet decoder rules are implemented for ATSS heads only")
    offset = float(cfg.MODEL.ANCHOR_GENERATOR.OFFSET)
    score_threshold, nms_threshold = float(test["score_threshold"]), float(test["nms_threshold"])
    topk, num_classes = int(test["topk_candidates"]), int(test["num_classes"])
    max_detections = int(cfg.TEST.DETECTIONS_PER_IMAGE)
    if rules == "detectron2":
        spec = Detectron2DenseSpec(
            kind=kind,
            strides=parts.strides,
            anchor_sizes=parts.sizes,
            anchor_aspect_ratios=parts.ratios,
            anchor_offset=offset,
            box_weights=list(box_weights),
            score_threshold=score_threshold,
            topk_candidates=topk,
            nms_threshold=nms_threshold,
            max_detections=max_detections,
            num_classes=num_classes,
        )
        return Detectron2DenseDecoder(spec)
    mmdet_spec = MMDetATSSSpec(
        strides=parts.strides,
        anchor_sizes=parts.sizes,
        anchor_aspect_ratios=parts.ratios,
        anchor_offset=offset,
        score_threshold=score_threshold,
        topk_candidates=topk,
        nms_threshold=nms_threshold,
        max_detections=max_detections,
        num_classes=num_classes,
        box_means=[float(v) for v in cfg.MODEL.ATSS.BBOX_REG_MEANS],
        box_stds=[float(v) for v in cfg.MODEL.ATSS.BBOX_REG_STDS],
        min_box_size=float(cfg.TEST.MIN_BOX_SIZE),
    )
    return MMDetATSSDecoder(mmdet_spec)


def _atss(cfg: Cfg) -> DenseDetector:
    c = cfg.MODEL.ATSS
    parts = _dense_parts(cfg, list(c.IN_FEATURES))
    head = ATSSHead(
        parts.in_channels,
        num_classes=c.NUM_CLASSES,
        num_anchors=parts.num_anchors,
        num_convs=c.NUM_CONVS,
        channels=c.CHANNELS,
        use_gn=c.USE_GN,
        prior_prob=c.PRIOR_PROB,
        num_levels=len(parts.in_features),
        pred_kernel_size=c.PRED_KERNEL_SIZE,
    )
    decoder = _dense_decoder(
        cfg, parts, "atss", c.BBOX_REG_WEIGHTS, score_threshold=c.INFERENCE_TH,
        topk_candidates=c.PRE_NMS_TOP_N, nms_threshold=c.NMS_TH, num_classes=c.NUM_CLASSES,
    )  # fmt: skip
    loss = build_atss_loss(cfg, head.num_anchors)
    return DenseDetector(parts.backbone, head, parts.in_features, decoder, loss=loss)


def _retinanet(cfg: Cfg) -> DenseDetector:
    c = cfg.MODEL.RETINANET
    parts = _dense_parts(cfg, list(c.IN_FEATURES))
    head = RetinaNetHead(
        parts.in_channels,
        num_classes=c.NUM_CLASSES,
        num_anchors=parts.num_anchors,
        num_convs=c.NUM_CONVS,
        norm=c.NORM,
        prior_prob=c.PRIOR_PROB,
    )
    decoder = _dense_decoder(
        cfg, parts, "retinanet", c.BBOX_REG_WEIGHTS, score_threshold=c.SCORE_THRESH_TEST,
        topk_candidates=c.TOPK_CANDIDATES_TEST, nms_threshold=c.NMS_THRESH_TEST, num_classes=c.NUM_CLASSES,
    )  # fmt: skip
    return DenseDetector(parts.backbone, head, parts.in_features, decoder, loss=build_retinanet_loss(cfg))


META_ARCHITECTURES: dict[str, Callable[[Cfg], DenseDetector | GeneralizedRCNN]] = {
    "ATSS": _atss,
    "RetinaNet": _retinanet,
    "GeneralizedRCNN": build_rcnn,
}


def _build(cfg: Cfg) -> DenseDetector | GeneralizedRCNN:
    get_dcn_kernel()  # a deformable-conv kernel that cannot run fails here, not in a forward pass
    name = cfg.MODEL.META_ARCHITECTURE
    if name not in META_ARCHITECTURES:
        raise ConfigError(
            f"MODEL.META_ARCHITECTURE {name!r} is not supported; choose one of {sorted(META_ARCHITECTURES)}"
        )
    model = META_ARCHITECTURES[name](cfg)
    return model.eval().to(cfg.MODEL.DEVICE)


def build_model(cfg: Cfg) -> Detector:
    """The detector named by ``MODEL.META_ARCHITECTURE``, in eval mode, on ``MODEL.DEVICE``, with
    random weights (an ``nn.Module``)."""
    return _build(cfg)


def load_model(cfg: Cfg, weights: str | Path | None) -> Detector:
    """:func:`build_model`, then ``weights`` loaded strictly (random weights, with a warning, when
    None); an mmdetection-layout model (``MODEL.LAYOUT = "mmdet"``) reads the checkpoint's
    mmdetection names.

    Raises:
        CheckpointError: the weights cannot be read or do not fit the model.
    """
    model = _build(cfg)
    if weights is not None:
        key_map = mmdet_key_map(model.state_dict()) if cfg.MODEL.LAYOUT == "mmdet" else None
        load_state_dict(model, str(weights), strict=True, key_map=key_map)
    else:
        logger.warning("no weights given: the detector has random weights")
    return model
