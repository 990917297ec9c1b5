"""PyTorch -> ONNX -> TensorRT export of dyhead-serve models (the ``dyhead-export`` CLI)."""
