"""The TensorRT backend: ``model.plan`` + ``model.json`` on an NVIDIA GPU.

Written against the documented TensorRT Python API (>= 10.9): ``trt.Runtime``,
``deserialize_cuda_engine``, ``IExecutionContext.set_input_shape`` / ``set_tensor_address`` /
``execute_async_v3``. Buffers are torch CUDA tensors, so no other CUDA binding is needed.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dyhead_serve.runtime.artifact import ModelArtifact
from dyhead_serve.runtime.base import BackendError, infer_in_chunks
from dyhead_serve.runtime.tensorrt_compat import (
    check_engine_compatibility,
    check_input_shape,
    deserialize_engine,
    rebuild_hint,
)

__all__ = ["TensorRTBackend"]

logger = logging.getLogger(__name__)


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
        trt.bool: torch.bool,
    }
    if dtype not in table:
        raise BackendError(f"model.plan has a tensor of type {dtype}, which this backend does not bind")
    return table[dtype]


class TensorRTBackend:
    """Runs a TensorRT engine built by ``dyhead-export tensorrt``.

    Args:
        model_dir: folder holding ``model.plan`` and ``model.json``.
        device: ``auto`` or ``cuda`` (``cuda:N`` for another GPU).

    ``infer`` accepts any image size inside the engine's optimisation profile and any batch of at
    least its minimum: a batch above the profile's maximum runs in chunks of that maximum. It
    returns the raw outputs (float32, on the GPU) under the same names as every other backend.
    """

    name = "tensorrt"

    def __init__(self, model_dir: str | Path, device: str = "auto") -> None:
        try:
            import tensorrt as trt  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise BackendError(
                "TensorRT is not installed: the tensorrt backend needs TensorRT >= 10.9 on an NVIDIA GPU "
                "(use the GPU Docker image), or run model.onnx with --backend onnxruntime"
            ) from exc
        if not torch.cuda.is_available():
            raise BackendError("the tensorrt backend needs an NVIDIA GPU; none is visible")
        if device not in ("auto", "cuda") and not device.startswith("cuda:"):
            raise BackendError(f"the tensorrt backend runs on CUDA devices, not {device!r}")
        self.device = torch.device("cuda" if device == "auto" else device)
        self.model_dir = model_dir = Path(model_dir)
        plan = model_dir / "model.plan"
        if not plan.is_file():
            raise BackendError(f"{model_dir}: no model.plan (build one with `dyhead-export tensorrt`)")
        self.artifact = ModelArtifact.load(model_dir / "model.json")
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        record = check_engine_compatibility(
            self.artifact.provenance,
            str(model_dir),
            trt.__version__,
            torch.cuda.get_device_name(index),
            f"{major}.{minor}",
        )
        if record.get("plugin_impl") == "jit":
            import dyhead_serve.plugins.trt_plugin  # noqa: F401  (a JIT plugin runs Python at inference)
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self.device):
            # Standard plugins first: an engine built from DeformConv nodes holds their layers.
            self._runtime, self.engine = deserialize_engine(trt, self._logger, plan.read_bytes())
            if self.engine is None:
                raise BackendError(f"TensorRT cannot deserialize {plan}; {rebuild_hint(str(model_dir))}")
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        declared = [o["name"] for o in self.artifact.outputs]
        self.output_names = [n for n in declared if n in names] or [n for n in names if not is_input[n]]
        self._dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self._lock = threading.Lock()  # one execution context: one inference at a time
        self.model_name = self.artifact.name
        self.input_spec = self.artifact.input_spec
        self.class_names = self.artifact.class_names
        self.decoder = self.artifact.build_decoder()
        self.precision = str(record.get("precision", "fp32"))
        logger.info("TensorRT %s engine %s on %s", trt.__version__, plan, torch.cuda.get_device_name(index))

    def profile_shapes(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) of an input in the engine's first optimisation profile."""
        low, opt, high = self.engine.get_tensor_profile_shape(name, 0)
        return tuple(low), tuple(opt), tuple(high)

    def _check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        low, _, high = self.profile_shapes(name)
        check_input_shape(name, shape, low, high, self.input_spec.size_divisibility)

    def infer(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        max_batch = self.profile_shapes("images")[2][0]
        return infer_in_chunks(self._infer_batch, images, image_sizes, max_batch)

    def _infer_batch(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        feeds = {"images": images, "image_sizes": image_sizes}
        with self._lock, torch.cuda.device(self.device):
            bound: dict[str, Tensor] = {}
            for name in self.input_names:
                if name not in feeds:
                    raise BackendError(f"model.plan has an input {name!r} this backend does not know")
                tensor = feeds[name].to(self.device, self._dtypes[name]).contiguous()
                self._check_shape(name, tuple(tensor.shape))
                if not self.context.set_input_shape(name, tuple(tensor.shape)):
                    raise BackendError(f"TensorRT refused the shape {list(tensor.shape)} for {name!r}")
                bound[name] = tensor
            outputs: dict[str, Tensor] = {}
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise BackendError(f"output {name!r} has a data-dependent shape {shape}, not supported")
                outputs[name] = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
            for name, tensor in {**bound, **outputs}.items():
                self.context.set_tensor_address(name, tensor.data_ptr())
            # The inputs were written on the current stream; TensorRT runs on its own.
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise BackendError("TensorRT failed to run the engine")
            for tensor in (*bound.values(), *outputs.values()):
                tensor.record_stream(self.stream)
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return {n: t.float() if t.is_floating_point() else t for n, t in outputs.items()}
