"""Detector modules: backbones, FPN, the DyHead tower, dense heads and their post-processing."""
