"""The OpenVINO backend: the ``model.onnx`` + ``model.json`` folder ONNX Runtime runs, on a CPU.

OpenVINO reads the ONNX graph itself, with one conversion of ours for ``DeformConv``
(:mod:`dyhead_serve.runtime.openvino_deform_conv`). By default it compiles the graph once with
dynamic batch, height and width: its CPU plugin runs a new input size without recompiling (the
first call at a new size costs a few tenths of a second more on ATSS R-50). A model compiled for
one input size runs faster (ATSS R-50 at 800x1344: about 6% less per call; the small embedded
model about 30% less, the dynamic shapes' per-call bookkeeping weighing more on 8 ms) but costs a
compilation per new size (2.3 s and 0.65 s): ``compiled_shapes`` keeps that many of them, least
recently used dropped first.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dyhead_serve.runtime.artifact import ModelArtifact
from dyhead_serve.runtime.base import BackendError, infer_in_chunks
from dyhead_serve.runtime.openvino_deform_conv import deform_conv_extension

__all__ = ["INSTALL_HINT", "OpenVinoBackend"]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'dyhead-serve[openvino]'"


class OpenVinoBackend:
    """Runs an exported ``model.onnx`` in OpenVINO's CPU plugin, in float32.

    Args:
        model_dir: folder holding ``model.onnx`` and ``model.json``.
        device: ``cpu`` or ``auto`` (both: OpenVINO's CPU plugin); ``cuda`` is an error.
        threads: OpenVINO's inference threads (``INFERENCE_NUM_THREADS``; 0: its default, one per
            physical core).
        compiled_shapes: 0 (default): one model compiled with dynamic shapes. N > 0: a model
            compiled per input shape, the N most recently used kept (the first call at a new
            shape compiles: seconds for a large model).

    Calls are serialised: one inference request runs at a time, using every thread given.
    """

    name = "openvino"

    def __init__(
        self, model_dir: str | Path, device: str = "cpu", threads: int = 0, compiled_shapes: int = 0
    ) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise BackendError(f"openvino is not installed: {INSTALL_HINT}") from exc
        if device not in ("auto", "cpu"):
            raise BackendError(f"the openvino backend runs on the CPU; got --device {device!r} (use cpu)")
        if threads < 0:
            raise BackendError(f"threads must be 0 (OpenVINO's default) or more, got {threads}")
        if compiled_shapes < 0:
            raise BackendError(f"compiled_shapes must be 0 (dynamic shapes) or more, got {compiled_shapes}")
        self.model_dir = model_dir = Path(model_dir)
        onnx_path = model_dir / "model.onnx"
        if not onnx_path.is_file():
            raise BackendError(f"{model_dir}: no model.onnx (export one with `dyhead-export onnx`)")
        self.artifact = ModelArtifact.load(model_dir / "model.json")
        core = ov.Core()
        core.add_extension(deform_conv_extension())
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            # The CPU plugin would run float32 graphs in bfloat16 on CPUs that have it (AMX,
            # AVX512-BF16): the verified outputs are float32 ones.
            "INFERENCE_PRECISION_HINT": "f32",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._core, self._config, self.compiled_shapes = core, config, compiled_shapes
        try:
            self._model = core.read_model(str(onnx_path))
            # Compiled once here even with compiled_shapes: a graph OpenVINO cannot compile fails
            # at load, not at the first request.
            compiled = core.compile_model(self._model, "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError and its own types
            raise BackendError(f"{onnx_path}: OpenVINO cannot load it ({_last_line(exc)})") from exc
        self.input_names = [port.get_any_name() for port in compiled.inputs]
        self.output_names = [self._output_name(port.get_names()) for port in compiled.outputs]
        batch = compiled.inputs[0].get_partial_shape()[0]
        self.fixed_batch = batch.get_length() if batch.is_static else None
        self._dynamic = None if compiled_shapes else compiled.create_infer_request()
        del compiled
        # input shapes -> the inference request of a model compiled for them (compiled_shapes > 0)
        self._by_shape: OrderedDict[tuple[tuple[int, ...], ...], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.device = torch.device("cpu")
        self.model_name = self.artifact.name
        self.input_spec = self.artifact.input_spec
        self.class_names = self.artifact.class_names
        self.decoder = self.artifact.build_decoder()
        self.precision = self.artifact.precision
        logger.info("OpenVINO %s: %s compiled for its CPU plugin", ov.get_version(), onnx_path)

    def _output_name(self, names: set[str]) -> str:
        """The name model.json gives an output (OpenVINO may list several names for one tensor)."""
        for output in self.artifact.outputs:
            if output.get("name") in names:
                return str(output["name"])
        if len(names) == 1:
            return next(iter(names))
        raise BackendError(
            f"{self.model_dir}/model.onnx has an output ({sorted(names)}) that model.json does not name"
        )

    def infer(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        if self.fixed_batch is not None and self.fixed_batch != images.shape[0]:
            # A graph exported with a fixed batch runs a larger batch in chunks of that size.
            if images.shape[0] % self.fixed_batch:
                raise BackendError(
                    f"model.onnx takes batches of {self.fixed_batch}; got {images.shape[0]} images"
                )
            return infer_in_chunks(self._run, images, image_sizes, self.fixed_batch)
        return self._run(images, image_sizes)

    def _run(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        feeds: dict[str, np.ndarray] = {}
        for name in self.input_names:
            if name == "images":
                feeds[name] = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
            elif name == "image_sizes":
                feeds[name] = np.ascontiguousarray(image_sizes.detach().cpu().numpy(), dtype=np.int64)
            else:
                raise BackendError(f"model.onnx has an input {name!r} this backend does not know")
        with self._lock:
            request = self._request_for(feeds)
            request.infer(feeds)
            # The request reuses its output buffers on the next call: copy out under the lock.
            return {
                name: torch.from_numpy(np.array(request.get_output_tensor(i).data, copy=True))
                for i, name in enumerate(self.output_names)
            }

    def _request_for(self, feeds: dict[str, np.ndarray]) -> Any:
        """The inference request for these inputs' shapes: the dynamic model's, or one compiled
        for the shapes (compiled now when new; the least recently used dropped beyond
        ``compiled_shapes``)."""
        if self._dynamic is not None:
            return self._dynamic
        key = tuple(feeds[name].shape for name in self.input_names)
        request = self._by_shape.pop(key, None)
        if request is None:
            model = self._model.clone()
            model.reshape({name: list(feeds[name].shape) for name in self.input_names})
            try:
                request = self._core.compile_model(model, "CPU", self._config).create_infer_request()
            except Exception as exc:  # OpenVINO raises RuntimeError and its own types
                raise BackendError(f"OpenVINO cannot compile the model for {key}: {_last_line(exc)}") from exc
            logger.info("OpenVINO: %s compiled for input shapes %s", self.model_name, key)
            while len(self._by_shape) >= self.compiled_shapes:
                self._by_shape.popitem(last=False)
        self._by_shape[key] = request
        return request


def _last_line(exc: BaseException) -> str:
    """The last line of an OpenVINO error (its first lines are source locations)."""
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__
