"""Decoding: a network's raw outputs -> detections (anchors, box coding, NMS, the decoders).

Imports torch and torchvision only (nothing of ``modeling`` or ``ops``), so serving an exported
model never loads the detector stack; ``modeling`` imports its anchors and box coding from here.
"""
