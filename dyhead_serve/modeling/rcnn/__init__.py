"""Faster R-CNN: region proposal network, ROI pooling and box head (its post-processing is
:mod:`dyhead_serve.decode.rcnn`)."""

from dyhead_serve.modeling.rcnn.build import build_rcnn
from dyhead_serve.modeling.rcnn.detector import GeneralizedRCNN

__all__ = ["GeneralizedRCNN", "build_rcnn"]
