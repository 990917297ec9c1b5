"""Runtime backends: one ``Backend`` interface over torch, ONNX Runtime and TensorRT, the model
options and the one loader.

Importing this package imports none of its modules: the command line reads the backend list
(:mod:`dyhead_serve.runtime.options`) without loading torch and the detectors.
"""
