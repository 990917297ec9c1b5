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
from dyhead_serve.runtime.export_cache import ExportCacheError, OnnxExportCache, cached_engine
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


def fastest_runtime(device: str) -> tuple[str, str]:
    """The runtime ``--backend auto`` gives a model on this host, and why when it is torch:
    ONNX Runtime on a CPU, TensorRT on a CUDA GPU with TensorRT installed, torch otherwise."""
    if resolve_torch_device(device) == "cpu":
        if importlib.util.find_spec("onnxruntime") is None:
            return "torch", "onnxruntime is not installed (pip install onnxruntime)"
        return "onnxruntime", ""
    if importlib.util.find_spec("tensorrt") is None:
        return "torch", "CUDA GPU without TensorRT (the GPU image has it; or pip install tensorrt)"
    return "tensorrt", ""


def _auto_exported(model_dir: Path, device: str, max_batch: int | None) -> tuple[Path, str]:
    """Where and in what ``auto`` runs an exported folder: its own engine on a host with TensorRT
    and a GPU, else this GPU's engine of its model.onnx from the engine cache (built once), else
    ONNX Runtime."""
    if fastest_runtime(device)[0] != "tensorrt":
        return model_dir, "onnxruntime"
    if (model_dir / "model.plan").is_file():
        return model_dir, "tensorrt"
    if not (model_dir / "model.onnx").is_file():
        return model_dir, "onnxruntime"  # the error names what is missing
    try:
        source = ModelSource("exported", model_dir.name, folder=model_dir)
        return cached_engine(source, max_batch), "tensorrt"
    except ExportCacheError as exc:
        logger.warning("auto: running %s in ONNX Runtime, not TensorRT: %s", model_dir, exc)
        return model_dir, "onnxruntime"


def _load_exported(model_dir: Path, options: ModelOptions, backend: str | None = None) -> Backend:
    backend = backend or options.backend
    if backend == "auto":
        model_dir, backend = _auto_exported(model_dir, options.device, options.max_batch)
    if backend == "tensorrt":
        if not (model_dir / "model.plan").is_file():
            raise BackendError(
                f"{model_dir}: no model.plan; build one with "
                f"`dyhead-export tensorrt --onnx {model_dir} --out {model_dir}`"
            )
        from dyhead_serve.runtime.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(model_dir, device=options.device)
    if backend == "torch":
        return _exported_torch_backend(model_dir, options.device)
    if not (model_dir / "model.onnx").is_file():
        raise BackendError(f"{model_dir}: no model.onnx to run with onnxruntime")
    from dyhead_serve.runtime.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(model_dir, device=options.device, intra_op_threads=options.threads)


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


def _onnx_cache(source: ModelSource) -> OnnxExportCache:
    """The export cache entry of ``source`` (the folder is created only when it is exported into:
    a read-only volume with the entry already in it serves)."""
    from dyhead_serve.checkpoint.cache import cache_dir

    return OnnxExportCache(source, cache_dir() / "onnx")


def _auto_onnxruntime(source: ModelSource, options: ModelOptions) -> Backend:
    """``auto`` on a CPU: the cached ONNX export of a zoo model or config, made on first use.

    The process that exports builds the PyTorch model first (under the export's lock, so that
    processes that wait and reuse the export never build it): a model that does not load (a
    mismatched checkpoint, a bad config) fails with its own error, and the model serves when the
    export fails."""
    cache = _onnx_cache(source)
    torch_backend: list[TorchBackend] = []

    def build_torch() -> None:
        torch_backend.append(load_torch_backend_from(source, options.device))

    try:
        found = cache.export(before_export=build_torch)
    except ExportCacheError as exc:
        logger.warning("auto: %s runs in torch, not onnxruntime: %s", source.name, str(exc).strip())
        return torch_backend[0] if torch_backend else load_torch_backend_from(source, options.device)
    torch_backend.clear()
    return _load_exported(found.path, options, "onnxruntime")


def load_backend(options: ModelOptions | None = None) -> Backend:
    """Load the model ``options`` name for inference (None: the embedded default).

    ``options.backend`` ``auto`` runs the model in the fastest verified runtime of this host (see
    :func:`fastest_runtime`): a zoo model or a config with weights is exported once into the cache
    and verified (:mod:`dyhead_serve.runtime.export_cache`), then reused; where that fails, it
    runs in torch, with one log line saying why. ``onnxruntime`` and ``tensorrt`` go through the
    same caches and fail rather than fall back; ``torch`` builds the PyTorch detector. See
    :class:`ModelOptions` for the rest.

    Raises:
        BackendError, ExportCacheError, ModelSourceError, ZooError, ConfigError, CheckpointError.
    """
    options = options if options is not None else ModelOptions()
    backend, device = options.backend, options.device
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    source = resolve_model(
        options.model, config=options.config, weights=options.weights, overrides=options.overrides
    )
    if source.kind == "exported":
        assert source.folder is not None
        return _load_exported(source.folder, options)
    if backend == "torch":
        return load_torch_backend_from(source, device)
    if source.embedded and not source.overrides and backend != "tensorrt":
        # The embedded model ships exported (model.onnx + model.json beside its weights).
        assert source.weights is not None
        return _load_exported(source.weights.parent, options)
    if backend == "onnxruntime":  # asked for: an export that failed before is tried again
        return _load_exported(_onnx_cache(source).export(retry_failed=True).path, options, backend)
    if backend == "tensorrt":
        return _load_exported(cached_engine(source, options.max_batch), options, backend)
    fastest, why = fastest_runtime(device)
    if fastest == "onnxruntime":
        return _auto_onnxruntime(source, options)
    if fastest == "tensorrt":
        try:
            return _load_exported(cached_engine(source, options.max_batch), options, fastest)
        except (ExportCacheError, BackendError, OSError) as exc:  # no engine, or one that does not load
            logger.warning("auto: %s runs in torch, not tensorrt: %s", source.name, str(exc).strip())
            return load_torch_backend_from(source, device)
    logger.info("auto: %s runs in torch: %s", source.name, why)
    return load_torch_backend_from(source, device)
