"""Faster R-CNN: region proposal network, ROI pooling, box head and their post-processing."""

from dyhead_serve.decode.rcnn import RCNNDecoder, RCNNDecoderSpec
from dyhead_serve.modeling.rcnn.build import build_rcnn
from dyhead_serve.modeling.rcnn.detector import GeneralizedRCNN

__all__ = ["GeneralizedRCNN", "RCNNDecoder", "RCNNDecoderSpec", "build_rcnn"]
