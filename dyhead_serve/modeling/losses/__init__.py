"""Training losses and anchor assignment of the dense detectors, as the official code computes
them (ATSS: official DyHead; RetinaNet: Detectron2).

The Faster R-CNN losses (RPN and ROI heads) live with that model in ``modeling/rcnn``.
"""

from dyhead_serve.modeling.losses.atss_assign import atss_assign
from dyhead_serve.modeling.losses.atss_loss import ATSSLoss, centerness_targets
from dyhead_serve.modeling.losses.build import build_atss_loss, build_retinanet_loss
from dyhead_serve.modeling.losses.dense_loss import DenseLoss
from dyhead_serve.modeling.losses.focal import sigmoid_focal_loss, sigmoid_focal_loss_from_labels
from dyhead_serve.modeling.losses.giou import atss_giou_loss, giou_loss
from dyhead_serve.modeling.losses.retinanet_loss import RetinaNetLoss
from dyhead_serve.modeling.losses.smooth_l1 import smooth_l1_loss

__all__ = [
    "ATSSLoss",
    "DenseLoss",
    "RetinaNetLoss",
    "atss_assign",
    "atss_giou_loss",
    "build_atss_loss",
    "build_retinanet_loss",
    "centerness_targets",
    "giou_loss",
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_from_labels",
    "smooth_l1_loss",
]
