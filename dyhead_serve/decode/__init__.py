"""Decoding: a network's raw outputs -> detections in the original image's pixels.

The layer between the network and the pipeline, shared by every backend (torch, ONNX Runtime,
TensorRT), so one implementation decides the detections whichever backend ran the network. It
imports torch and torchvision only (nothing of ``modeling`` or ``ops``), so serving an exported
model never loads the detector stack; ``modeling`` imports its anchors and box coding from here.

- :mod:`~dyhead_serve.decode.base`: the :class:`Decoder` protocol and :class:`DecodedDetections`.
- :mod:`~dyhead_serve.decode.raw_outputs`: the outputs every backend returns and their check.
- One decoder per set of rules, each with its spec, ``to_dict`` and ``from_dict``:
  :mod:`~dyhead_serve.decode.detectron2_dense` (ATSS, RetinaNet),
  :mod:`~dyhead_serve.decode.mmdet_atss` (mmdetection's ATSS) and
  :mod:`~dyhead_serve.decode.rcnn` (Faster R-CNN); :func:`decoder_from_dict` picks the class.
- What they are built from: :mod:`~dyhead_serve.decode.anchors`,
  :mod:`~dyhead_serve.decode.box_coding`, :mod:`~dyhead_serve.decode.class_offset_nms` (mmcv's
  NMS) and :mod:`~dyhead_serve.decode.rescale` (Detectron2's mapping back to the original image).
"""

from dyhead_serve.decode.base import DecodedDetections, Decoder
from dyhead_serve.decode.from_dict import decoder_from_dict

__all__ = ["DecodedDetections", "Decoder", "decoder_from_dict"]
