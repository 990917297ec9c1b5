"""PyTorch -> ONNX -> TensorRT export of dyhead-serve models: the library (graph export, engine
build and cache, verification). The ``dyhead-export`` command is :mod:`dyhead_serve.cli.export`.

In the repository this is the folder ``export/``; it installs as ``dyhead_serve.export``.
"""
