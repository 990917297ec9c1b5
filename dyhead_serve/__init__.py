"""dyhead-serve: DyHead detectors in plain PyTorch, exported to ONNX/TensorRT, served over REST."""

__version__ = "0.1.0"
