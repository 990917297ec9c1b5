"""Build a Faster R-CNN (``MODEL.META_ARCHITECTURE: GeneralizedRCNN``) from a Detectron2-style
config; each module gets the few values it needs."""

from __future__ import annotations

import logging
from typing import Any

from dyhead_serve.decode.anchors import AnchorGenerator
from dyhead_serve.decode.box_coding import BoxCoder
from dyhead_serve.decode.rcnn import RCNNDecoder, RCNNDecoderSpec
from dyhead_serve.modeling.matcher import Matcher
from dyhead_serve.modeling.rcnn.detector import GeneralizedRCNN
from dyhead_serve.modeling.rcnn.fast_rcnn_loss import FastRCNNLoss
from dyhead_serve.modeling.rcnn.pooler import ROIPooler
from dyhead_serve.modeling.rcnn.proposal_sampling import ProposalSampler
from dyhead_serve.modeling.rcnn.roi_heads import FastRCNNConvFCHead, FastRCNNOutputLayers, StandardROIHeads
from dyhead_serve.modeling.rcnn.rpn import RPN, StandardRPNHead
from dyhead_serve.modeling.rcnn.rpn_loss import RPNLoss

__all__ = ["build_rcnn"]

logger = logging.getLogger(__name__)

Cfg = Any  # dyhead_serve.config.CfgNode

_POOLER_TYPES = {"ROIAlignV2": True, "ROIAlign": False}  # name -> ROIAlign's ``aligned``


def _check_supported(cfg: Cfg) -> None:
    m = cfg.MODEL
    expected = {
        "MODEL.PROPOSAL_GENERATOR.NAME": (m.PROPOSAL_GENERATOR.NAME, "RPN"),
        "MODEL.RPN.HEAD_NAME": (m.RPN.HEAD_NAME, "StandardRPNHead"),
        "MODEL.ROI_HEADS.NAME": (m.ROI_HEADS.NAME, "StandardROIHeads"),
        "MODEL.ROI_BOX_HEAD.NAME": (m.ROI_BOX_HEAD.NAME, "FastRCNNConvFCHead"),
        "MODEL.ROI_BOX_HEAD.NUM_CONV": (m.ROI_BOX_HEAD.NUM_CONV, 0),
        "MODEL.ANCHOR_GENERATOR.NAME": (m.ANCHOR_GENERATOR.NAME, "DefaultAnchorGenerator"),
        "MODEL.LOAD_PROPOSALS": (m.LOAD_PROPOSALS, False),
        "MODEL.KEYPOINT_ON": (m.KEYPOINT_ON, False),
    }
    for key, (value, supported) in expected.items():
        if value != supported:
            raise ValueError(f"{key} {value!r} is not supported for GeneralizedRCNN; only {supported!r} is")
    if list(m.RPN.CONV_DIMS) != [-1]:
        raise ValueError(f"MODEL.RPN.CONV_DIMS {list(m.RPN.CONV_DIMS)} is not supported; only [-1] is")
    if m.ROI_BOX_HEAD.POOLER_TYPE not in _POOLER_TYPES:
        raise ValueError(
            f"MODEL.ROI_BOX_HEAD.POOLER_TYPE {m.ROI_BOX_HEAD.POOLER_TYPE!r} is not supported; "
            f"choose one of {sorted(_POOLER_TYPES)}"
        )
    if m.ROI_BOX_HEAD.USE_FED_LOSS:
        raise ValueError(
            "MODEL.ROI_BOX_HEAD.USE_FED_LOSS is not supported (it needs per-class dataset frequencies); "
            "set it False"
        )
    if m.MASK_ON:
        raise ValueError(
            "MODEL.MASK_ON is True but mask heads are not implemented (the official DyHead Faster R-CNN "
            "checkpoint has no mask weights); set MODEL.MASK_ON False"
        )


def build_rcnn(cfg: Cfg) -> GeneralizedRCNN:
    """Backbone, RPN and box branch as Detectron2 builds them for ``GeneralizedRCNN``, with their
    training losses (``RPN.*`` and ``ROI_HEADS.*`` sampling, ``ROI_BOX_HEAD.*`` losses).

    ``ROI_MASK_HEAD`` is not built (``MODEL.MASK_ON`` must be False, as in the official config).
    """
    # build.py's table lists this function, so its backbone builders are imported when called.
    from dyhead_serve.modeling.build import build_backbone

    _check_supported(cfg)
    if cfg.MODEL.ROI_MASK_HEAD.NAME:
        logger.info(
            "MODEL.MASK_ON is False: ROI_MASK_HEAD (%s) is not built; the model predicts boxes only",
            cfg.MODEL.ROI_MASK_HEAD.NAME,
        )
    backbone = build_backbone(cfg)
    shapes = backbone.output_shape()
    rpn_in = list(cfg.MODEL.RPN.IN_FEATURES)
    roi_in = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
    missing = [f for f in [*rpn_in, *roi_in] if f not in shapes]
    if missing:
        raise ValueError(f"RPN/ROI input(s) {missing} are not backbone outputs {list(shapes)}")
    channels = {shapes[f].channels for f in [*rpn_in, *roi_in]}
    if len(channels) != 1:
        raise ValueError(f"every RPN and ROI input must have the same channels, got {channels}")
    in_channels = channels.pop()

    a = cfg.MODEL.ANCHOR_GENERATOR
    anchors = AnchorGenerator.per_level(
        [shapes[f].stride for f in rpn_in], a.SIZES, a.ASPECT_RATIOS, float(a.OFFSET)
    )
    num_anchors = set(anchors.num_anchors_per_location)
    if len(num_anchors) != 1:
        raise ValueError("every RPN level needs the same number of anchors per location")
    r = cfg.MODEL.RPN
    rpn = RPN(
        StandardRPNHead(in_channels, num_anchors.pop()),
        anchors,
        BoxCoder(r.BBOX_REG_WEIGHTS),
        pre_nms_topk=int(r.PRE_NMS_TOPK_TEST),
        post_nms_topk=int(r.POST_NMS_TOPK_TEST),
        nms_threshold=float(r.NMS_THRESH),
        min_box_size=float(cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE),
        loss=_rpn_loss(cfg),
        train_pre_nms_topk=int(r.PRE_NMS_TOPK_TRAIN),
        train_post_nms_topk=int(r.POST_NMS_TOPK_TRAIN),
    )

    b = cfg.MODEL.ROI_BOX_HEAD
    resolution = int(b.POOLER_RESOLUTION)
    pooler = ROIPooler(
        resolution,
        [shapes[f].stride for f in roi_in],
        sampling_ratio=int(b.POOLER_SAMPLING_RATIO),
        aligned=_POOLER_TYPES[b.POOLER_TYPE],
    )
    num_classes = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    box_head = FastRCNNConvFCHead(in_channels * resolution**2, int(b.NUM_FC), int(b.FC_DIM))
    predictor = FastRCNNOutputLayers(box_head.output_size, num_classes, bool(b.CLS_AGNOSTIC_BBOX_REG))
    spec = RCNNDecoderSpec(
        box_weights=list(b.BBOX_REG_WEIGHTS),
        score_threshold=float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST),
        nms_threshold=float(cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST),
        max_detections=int(cfg.TEST.DETECTIONS_PER_IMAGE),
        num_classes=num_classes,
        sigmoid_scores=bool(b.USE_SIGMOID_CE),
    )
    h = cfg.MODEL.ROI_HEADS
    sampler = ProposalSampler(
        Matcher(h.IOU_THRESHOLDS, h.IOU_LABELS, allow_low_quality_matches=False),
        num_classes,
        batch_size_per_image=int(h.BATCH_SIZE_PER_IMAGE),
        positive_fraction=float(h.POSITIVE_FRACTION),
        append_gt=bool(h.PROPOSAL_APPEND_GT),
    )
    box_loss = FastRCNNLoss(
        BoxCoder(b.BBOX_REG_WEIGHTS),
        num_classes,
        smooth_l1_beta=float(b.SMOOTH_L1_BETA),
        box_reg_loss_type=str(b.BBOX_REG_LOSS_TYPE),
        box_reg_loss_weight=float(b.BBOX_REG_LOSS_WEIGHT),
        sigmoid_ce=bool(b.USE_SIGMOID_CE),
    )
    roi_heads = StandardROIHeads(pooler, box_head, predictor, sampler, box_loss)
    return GeneralizedRCNN(backbone, rpn, roi_heads, rpn_in, roi_in, RCNNDecoder(spec))


def _rpn_loss(cfg: Cfg) -> RPNLoss:
    r = cfg.MODEL.RPN
    return RPNLoss(
        BoxCoder(r.BBOX_REG_WEIGHTS),
        Matcher(r.IOU_THRESHOLDS, r.IOU_LABELS, allow_low_quality_matches=True),
        batch_size_per_image=int(r.BATCH_SIZE_PER_IMAGE),
        positive_fraction=float(r.POSITIVE_FRACTION),
        smooth_l1_beta=float(r.SMOOTH_L1_BETA),
        box_reg_loss_type=str(r.BBOX_REG_LOSS_TYPE),
        cls_weight=float(r.LOSS_WEIGHT),
        loc_weight=float(r.BBOX_REG_LOSS_WEIGHT) * float(r.LOSS_WEIGHT),
        boundary_threshold=float(r.BOUNDARY_THRESH),
    )
