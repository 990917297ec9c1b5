"""What names a model and how to run it: the one set of options the command line, the server's
settings and :func:`dyhead_serve.runtime.loader.load_backend` share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

__all__ = ["BACKENDS", "BACKEND_HELP", "DEVICE_HELP", "PRECISIONS", "BackendName", "ModelOptions"]

BackendName = Literal["auto", "torch", "onnxruntime", "tensorrt"]
# The runtime backends a model can run in (``auto``: chosen from what the model is).
BACKENDS: tuple[str, ...] = get_args(BackendName)
BACKEND_HELP = (
    "auto: the fastest verified runtime of this host: for a zoo name or a config, ONNX Runtime on a "
    "CPU (exported once into the cache, then reused), a cached TensorRT engine on a GPU host with "
    "TensorRT, else torch; for an exported folder, its engine or its model.onnx"
)
DEVICE_HELP = "cpu, cuda or auto (cuda when available)"
# An exported network's precision (model.json's provenance.precision; fp16: a mixed-precision
# graph or a float16 engine). Files written before it was recorded are fp32.
PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class ModelOptions:
    """A model and where it runs.

    Attributes:
        model: a folder with ``model.json`` (+ ``model.onnx`` / ``model.plan``), or a zoo name
            (None: the embedded default unless ``config`` is given). Exclusive with ``config``.
        config: a Detectron2 DyHead or mmdetection config (file or shipped name), with
            ``weights`` (torch backend).
        weights: the checkpoint of ``config``, or a local copy of a zoo model's weights.
        overrides: flattened ``KEY VALUE`` config overrides (torch backend).
        backend: one of :data:`BACKENDS`.
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: ONNX Runtime intra-op threads (0: its default).
        max_batch: the most images one call runs, which a TensorRT engine built for ``auto`` must
            take (None: the server's batch size).
    """

    model: str | Path | None = None
    config: str | Path | None = None
    weights: str | Path | None = None
    overrides: tuple[str, ...] = ()
    backend: BackendName = "auto"
    device: str = "auto"
    threads: int = 0
    max_batch: int | None = None
