"""One loader for every way of naming a model: an exported folder, a zoo name, or a config
with weights."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from dyhead_serve.model_source import ModelSource, resolve_model
from dyhead_serve.runtime.artifact import ModelArtifact
from dyhead_serve.runtime.base import Backend, BackendError
from dyhead_serve.runtime.options import BACKENDS, ModelOptions
from dyhead_serve.runtime.torch_backend import TorchBackend, build_torch_backend

__all__ = [
    "BACKENDS",
    "exported_config",
    "load_backend",
    "load_torch_backend",
    "load_torch_backend_from",
    "resolve_torch_device",
]

logger = logging.getLogger(__name__)


def resolve_torch_device(device: str) -> str:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendError("--device cuda was asked for, but no CUDA GPU is available; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise BackendError(f"unknown device {device!r}; use cpu, cuda or auto")
    return device


def load_torch_backend(
    config: str | Path,
    weights: str | Path | None,
    *,
    device: str = "auto",
    overrides: Sequence[str] = (),
    model_name: str | None = None,
    class_names: Sequence[str] | None = None,
) -> TorchBackend:
    """Build the configured detector and load ``weights`` strictly (random weights when None)."""
    from dyhead_serve.config import load_config

    cfg = load_config(config, overrides=[*overrides, "MODEL.DEVICE", resolve_torch_device(device)])
    names = list(class_names) if class_names is not None else None
    return build_torch_backend(cfg, weights, model_name or Path(str(config)).stem, names)


def _load_exported(model_dir: Path, backend: str, device: str, threads: int) -> Backend:
    has_plan = (model_dir / "model.plan").is_file()
    has_onnx = (model_dir / "model.onnx").is_file()
    if backend == "auto":
        trt_ready = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()
        backend = "tensorrt" if has_plan and trt_ready else "onnxruntime"
    if backend == "tensorrt":
        if not has_plan:
            raise BackendError(
                f"{model_dir}: no model.plan; build one with "
                f"`dyhead-export tensorrt --onnx {model_dir} --out {model_dir}`"
            )
        from dyhead_serve.runtime.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(model_dir, device=device)
    if backend == "torch":
        return _exported_torch_backend(model_dir, device)
    if not has_onnx:
        raise BackendError(f"{model_dir}: no model.onnx to run with onnxruntime")
    from dyhead_serve.runtime.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(model_dir, device=device, intra_op_threads=threads)


def exported_config(model_dir: str | Path) -> tuple[str | Path, list[str]]:
    """The config an exported folder was exported from (``provenance.config`` of its model.json:
    a zoo name or a file) and its overrides.

    Raises:
        BackendError: model.json records no config, or its file no longer exists.
        ZooError: a zoo name this installation does not know.
    """
    from dyhead_serve import zoo

    model_dir = Path(model_dir)
    provenance = ModelArtifact.load(model_dir / "model.json").provenance
    config = provenance.get("config")
    if not isinstance(config, str) or not config:
        raise BackendError(f"{model_dir}/model.json records no config (provenance.config)")
    overrides = [str(v) for v in provenance.get("overrides", [])]
    if config.startswith("zoo:"):
        return zoo.get_model(config.removeprefix("zoo:")).config_path, overrides
    if not Path(config).is_file():
        raise BackendError(f"{model_dir} was exported from {config}, which no longer exists")
    return Path(config), overrides


def _exported_torch_backend(model_dir: Path, device: str) -> TorchBackend:
    """The torch backend of an exported folder that carries its weights (model.safetensors,
    ``dyhead-export onnx --external-weights``), built from the config it was exported from."""
    if not (model_dir / "model.json").is_file():
        raise BackendError(
            f"{model_dir}: no model.json; the torch backend needs a folder exported with "
            "--external-weights, --config and --weights, or a zoo name"
        )
    artifact = ModelArtifact.load(model_dir / "model.json")
    weights_file = artifact.provenance.get("weights_file")
    if not isinstance(weights_file, str) or not (model_dir / weights_file).is_file():
        raise BackendError(
            f"{model_dir} holds an exported network without its weights; the torch backend needs "
            "a folder exported with --external-weights, --config and --weights, or a zoo name"
        )
    config, overrides = exported_config(model_dir)
    return load_torch_backend(
        config,
        model_dir / weights_file,
        device=device,
        overrides=overrides,
        model_name=artifact.name,
        class_names=artifact.class_names,
    )


def load_torch_backend_from(source: ModelSource, device: str = "auto") -> TorchBackend:
    """The torch backend of a zoo model or a config with weights (see :func:`resolve_model`)."""
    if source.kind == "exported":
        raise BackendError(
            f"{source.folder} holds an exported network; "
            "the torch backend needs --config and --weights, or a zoo name"
        )
    assert source.config is not None
    return load_torch_backend(
        source.config,
        source.weights,
        device=device,
        overrides=source.overrides,
        model_name=source.name,
        class_names=source.class_names,
    )


def load_backend(options: ModelOptions | None = None) -> Backend:
    """Load the model ``options`` name for inference (None: the embedded default).

    ``options.backend`` ``auto`` picks TensorRT for an engine on a GPU host, ONNX Runtime for
    ``model.onnx``, torch for configs and zoo names; see :class:`ModelOptions` for the rest.

    Raises:
        BackendError, ModelSourceError, ZooError, ConfigError, CheckpointError.
    """
    options = options if options is not None else ModelOptions()
    backend, device, threads = options.backend, options.device, options.threads
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    source = resolve_model(
        options.model, config=options.config, weights=options.weights, overrides=options.overrides
    )
    if source.kind == "exported":
        assert source.folder is not None
        return _load_exported(source.folder, backend, device, threads)
    if source.embedded and backend in ("auto", "onnxruntime") and not source.overrides:
        # The embedded model ships exported (model.onnx + model.json beside its weights) and runs
        # in ONNX Runtime unless torch is asked for.
        assert source.weights is not None
        return _load_exported(source.weights.parent, "onnxruntime", device, threads)
    if backend not in ("auto", "torch"):
        if source.kind == "config":
            raise BackendError(f"--config runs in the torch backend; export it first for {backend}")
        raise BackendError(
            f"zoo model {source.name} runs in the torch backend; export it with "
            f"`dyhead-export onnx --model {source.name} --out DIR` and pass --model DIR for {backend}"
        )
    return load_torch_backend_from(source, device)
