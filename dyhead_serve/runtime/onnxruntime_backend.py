"""The ONNX Runtime backend: ``model.onnx`` + ``model.json``; CUDA when available, else CPU."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dyhead_serve.runtime.artifact import ModelArtifact
from dyhead_serve.runtime.base import BackendError, infer_in_chunks

__all__ = ["OnnxRuntimeBackend"]

logger = logging.getLogger(__name__)


class OnnxRuntimeBackend:
    """Runs an exported ``model.onnx`` in ONNX Runtime.

    Args:
        model_dir: folder holding ``model.onnx`` and ``model.json``.
        device: ``auto`` (CUDA execution provider when ``onnxruntime-gpu`` is installed and a GPU
            is present, else CPU), ``cpu`` or ``cuda``.
        intra_op_threads / inter_op_threads: ONNX Runtime thread pools (0: its default).
    """

    name = "onnxruntime"

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "auto",
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendError(
                "onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)"
            ) from exc
        self.model_dir = model_dir = Path(model_dir)
        onnx_path = model_dir / "model.onnx"
        if not onnx_path.is_file():
            raise BackendError(f"{model_dir}: no model.onnx (export one with `dyhead-export onnx`)")
        self.artifact = ModelArtifact.load(model_dir / "model.json")
        providers = self._providers(device, ort.get_available_providers())
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendError(f"{onnx_path}: ONNX Runtime cannot load it ({exc})") from exc
        self.providers = self.session.get_providers()
        self.device = torch.device("cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.model_name = self.artifact.name
        self.input_spec = self.artifact.input_spec
        self.class_names = self.artifact.class_names
        self.decoder = self.artifact.build_decoder()
        self.precision = self.artifact.precision
        logger.info("ONNX Runtime session for %s on %s", onnx_path, ", ".join(self.providers))

    @staticmethod
    def _providers(device: str, available: list[str]) -> list[str]:
        if device not in ("auto", "cpu", "cuda"):
            raise BackendError(f"unknown device {device!r} for onnxruntime; use auto, cpu or cuda")
        has_cuda = "CUDAExecutionProvider" in available
        if device == "cuda" and not has_cuda:
            raise BackendError(
                "--device cuda needs onnxruntime-gpu with a CUDA GPU; this onnxruntime offers "
                + ", ".join(available)
            )
        if device != "cpu" and has_cuda and (device == "cuda" or torch.cuda.is_available()):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def infer(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        fixed = self.session.get_inputs()[0].shape[0]
        if isinstance(fixed, int) and fixed != images.shape[0]:
            # A graph exported with a fixed batch runs a larger batch in chunks of that size.
            if images.shape[0] % fixed:
                raise BackendError(f"model.onnx takes batches of {fixed}; got {images.shape[0]} images")
            return infer_in_chunks(self._run, images, image_sizes, fixed)
        return self._run(images, image_sizes)

    def _run(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        feeds: dict[str, np.ndarray] = {}
        for name in self.input_names:
            if name == "images":
                feeds[name] = images.detach().cpu().numpy().astype(np.float32, copy=False)
            elif name == "image_sizes":
                feeds[name] = image_sizes.detach().cpu().numpy().astype(np.int64, copy=False)
            else:
                raise BackendError(f"model.onnx has an input {name!r} this backend does not know")
        results = self.session.run(self.output_names, feeds)
        return {
            name: torch.from_numpy(np.asarray(value))
            for name, value in zip(self.output_names, results, strict=True)
        }
