"""Runtime backends: one ``Backend`` interface over torch, ONNX Runtime and TensorRT."""

from dyhead_serve.runtime.artifact import ModelArtifact
from dyhead_serve.runtime.base import Backend, BackendError

__all__ = ["Backend", "BackendError", "ModelArtifact"]
