"""PyTorch -> ONNX -> TensorRT export of dyhead-serve models (the ``dyhead-export`` CLI).

In the repository this is the folder ``export/``; it installs as ``dyhead_serve.export``.
"""
