"""Runtime backends: one ``Backend`` interface over torch, ONNX Runtime and TensorRT."""

from dyhead_serve.runtime.artifact import ModelArtifact, decoder_from_dict, decoder_to_dict
from dyhead_serve.runtime.base import Backend, BackendError

__all__ = ["Backend", "BackendError", "ModelArtifact", "decoder_from_dict", "decoder_to_dict"]
