"""A cache of TensorRT engines: a container builds the engine of its model once per TensorRT
version, GPU and precision, into a volume, and reuses it on every later start.

An engine only runs with the TensorRT version and GPU it was built for, so it cannot ship in an
image; building it takes minutes, so it must not happen at every start either. The cache lives
under one root (the image's volume) as::

    <root>/<model label>-<model id>/trt<version>-<gpu>-sm<capability>-<precision>-<profile>/
        model.plan  model.json  model.onnx  timing-*.cache (written by `dyhead-export tensorrt`)
        engine_key.json                                     (what the folder name stands for)

The model id is a checksum of what decides the network: the weights file (or ``model.onnx``), the
config and overrides, and the version of this package. A folder appears only complete (it is
built beside its final name and renamed), and one lock per folder keeps replicas that share the
volume from building the same engine twice.

From TensorRT 10.12 on engines are strongly typed: an fp16 engine comes from a float16 ONNX graph.
The tensorrt command writes the float16 twin of a float32 folder into its build folder first; a
float16 folder cannot give an fp32 engine, which is checked before anything is built
(:func:`check_source_precision`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from dyhead_serve import __version__, zoo
from dyhead_serve.checkpoint import sha256_of
from dyhead_serve.errors import UserError
from dyhead_serve.model_source import ModelSourceError, resolve_model
from dyhead_serve.runtime.artifact import ModelArtifact
from dyhead_serve.runtime.base import BackendError
from dyhead_serve.runtime.export_cache import (
    ExportCacheError,
    exclusive,
    model_fingerprint,
    run_exporter,
    source_arguments,
)
from dyhead_serve.runtime.export_command import exporter_command
from dyhead_serve.runtime.tensorrt_compat import check_engine_compatibility

__all__ = [
    "BuildSource",
    "BuildTarget",
    "EngineCacheError",
    "EngineResult",
    "check_source_precision",
    "current_target",
    "engine_key",
    "find_or_build",
    "mounted_engine",
    "profile_for_batch",
    "resolve_source",
]

logger = logging.getLogger(__name__)

Precision = Literal["fp16", "fp32"]
# The shape presets of `dyhead-export tensorrt` by the largest batch they accept, smallest first.
BATCH_PROFILES = (("coco", 1), ("coco-batch4", 4), ("coco-batch8", 8))
KEY_FILE = "engine_key.json"


class EngineCacheError(UserError, RuntimeError):
    """The engine can be neither found nor built; the message says what to change."""


@dataclass(frozen=True)
class BuildSource:
    """What an engine is built from.

    Attributes:
        label: a readable name (zoo name, config stem or folder name).
        model_id: checksum of everything that decides the network (hex).
        build_args: the source flags of ``dyhead-export tensorrt``: ``--model NAME --weights W``,
            ``--config CFG --weights W`` (with ``--set`` overrides) or ``--onnx DIR``.
    """

    label: str
    model_id: str
    build_args: tuple[str, ...]


@dataclass(frozen=True)
class BuildTarget:
    """What an engine is tied to besides its model: this machine's TensorRT and GPU, and the
    build options."""

    tensorrt: str
    gpu: str
    compute_capability: str
    precision: Precision
    profile: str


@dataclass(frozen=True)
class EngineResult:
    """An engine folder ready to serve, and how it was obtained (built, reused or mounted)."""

    path: Path
    how: Literal["built", "reused", "mounted"]
    seconds: float = 0.0

    def describe(self, model: str, target: BuildTarget, precision: str | None = None) -> str:
        """The one line a container logs before serving."""
        how = f"built in {self.seconds:.0f} s" if self.how == "built" else self.how
        return (
            f"dyhead-serve: model {model} | GPU {target.gpu} (compute capability "
            f"{target.compute_capability}) | TensorRT {target.tensorrt} | "
            f"{precision or target.precision} engine {how}: {self.path}"
        )


def _model_id(fields: dict[str, object]) -> str:
    text = json.dumps({**fields, "dyhead_serve": __version__}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def resolve_source(
    model: str | None = None,
    *,
    config: str | None = None,
    weights: str | None = None,
    overrides: Sequence[str] = (),
) -> BuildSource:
    """Name and checksum the model to build, as ``dyhead-serve serve`` names models (see
    :func:`dyhead_serve.model_source.resolve_model`).

    Args:
        model: a zoo name (default: the embedded default), or a folder with ``model.onnx`` and
            ``model.json`` (``dyhead-export onnx`` output). Exclusive with ``config``.
        config, weights: a Detectron2 DyHead config (file or shipped name) and its checkpoint;
            with a zoo name, ``weights`` is a local copy of its weights.
        overrides: ``KEY VALUE`` config overrides (not with an ONNX folder).

    A zoo model's weights are downloaded into the zoo cache first when they are not there.
    """
    try:
        source = resolve_model(model, config=config, weights=weights, overrides=overrides)
    except (ModelSourceError, zoo.ZooError) as exc:
        raise EngineCacheError(str(exc)) from exc
    if source.kind == "exported":
        folder = source.folder
        assert folder is not None
        if not (folder / "model.onnx").is_file() or not (folder / "model.json").is_file():
            raise EngineCacheError(
                f"{folder} holds no model.onnx + model.json to build an engine from "
                "(export one with `dyhead-export onnx`)"
            )
        fields: dict[str, object] = {name: sha256_of(folder / name) for name in ("model.onnx", "model.json")}
        return BuildSource(source.name, _model_id(fields), ("--onnx", str(folder)))
    try:
        fields = {"model": model_fingerprint(source)}
        args = source_arguments(source)
    except ExportCacheError as exc:
        raise EngineCacheError(str(exc)) from exc
    label = Path(str(source.config)).stem if source.kind == "config" else source.name
    return BuildSource(label, _model_id(fields), args)


def profile_for_batch(max_batch: int, profile: str | None = None) -> str:
    """The shape preset whose largest batch covers ``max_batch`` (the server's batch size).

    With ``profile`` given, check that it does. A server that batches beyond its engine's profile
    fails those batches, so the two must agree.
    """
    from .tensorrt_build import PROFILES

    if profile is not None:
        if profile not in PROFILES:
            known = ", ".join(sorted(PROFILES))
            raise EngineCacheError(f"unknown profile {profile!r}; choose one of {known}")
        if PROFILES[profile].max[0] < max_batch:
            raise EngineCacheError(
                f"profile {profile} accepts batches of at most {PROFILES[profile].max[0]} images, but the "
                f"server batches up to {max_batch}: lower the batch size (DYHEAD_SERVE_MAX_BATCH_SIZE) "
                "or pick a larger profile"
            )
        return profile
    for name, largest in BATCH_PROFILES:
        if largest >= max_batch:
            return name
    raise EngineCacheError(
        f"no shape preset accepts batches of {max_batch} images (the largest takes "
        f"{BATCH_PROFILES[-1][1]}); lower the server's batch size (DYHEAD_SERVE_MAX_BATCH_SIZE)"
    )


def current_target(precision: Precision, profile: str) -> BuildTarget:
    """This machine's TensorRT version and GPU, with the build options."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise EngineCacheError(
            "TensorRT is not installed: engines are built and served in the GPU image "
            "(docker/Dockerfile), or on a host with TensorRT >= 10.9 and an NVIDIA GPU"
        ) from exc
    from .tensorrt_build import EngineBuildError, gpu_identity

    try:
        identity = gpu_identity()
    except EngineBuildError as exc:
        raise EngineCacheError(
            "no NVIDIA GPU is visible: start the container with a GPU (`docker run --gpus all`, the "
            "compose file's device reservation, or nvidia.com/gpu in Kubernetes) on a host with the "
            "NVIDIA Container Toolkit"
        ) from exc
    return BuildTarget(
        str(trt.__version__), str(identity["gpu"]), str(identity["compute_capability"]), precision, profile
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "unnamed"


def engine_key(source: BuildSource, target: BuildTarget) -> Path:
    """The engine's folder relative to the cache root."""
    model_dir = f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', source.label)}-{source.model_id[:16]}"
    capability = target.compute_capability.replace(".", "")
    engine_dir = (
        f"trt{target.tensorrt}-{_slug(target.gpu)}-sm{capability}-{target.precision}-{target.profile}"
    )
    return Path(model_dir) / engine_dir


def mounted_engine(folder: Path, target: BuildTarget, max_batch: int) -> tuple[EngineResult, str] | None:
    """A mounted folder's own ``model.plan`` when it was built for this TensorRT and GPU, with its
    precision; None when it holds no engine, or one for another machine and a ``model.onnx`` to
    build from instead.

    Raises:
        EngineCacheError: a foreign engine and no ONNX model, or an engine of a dynamic-batch graph
            whose profile takes fewer than ``max_batch`` images.
    """
    if not (folder / "model.plan").is_file():
        return None
    try:
        provenance = ModelArtifact.load(folder / "model.json").provenance
        record = check_engine_compatibility(
            provenance, str(folder), target.tensorrt, target.gpu, target.compute_capability
        )
    except (BackendError, FileNotFoundError, ValueError, KeyError, TypeError) as exc:
        if not (folder / "model.onnx").is_file():
            raise EngineCacheError(str(exc).strip()) from exc
        logger.warning("%s; building one from %s/model.onnx instead", str(exc).split(";")[0], folder)
        return None
    profile = record.get("profile")
    largest = profile["max"][0] if isinstance(profile, dict) and "max" in profile else None
    # A graph with a fixed batch (Faster R-CNN: 1) takes no other: the backend runs the server's
    # batches in chunks of it. A dynamic one built for fewer images than the server batches is a
    # mistake to point out.
    if record.get("fixed_batch") is None and largest is not None and int(largest) < max_batch:
        raise EngineCacheError(
            f"{folder}/model.plan takes batches of at most {largest} images, but the server batches up "
            f"to {max_batch}: set DYHEAD_SERVE_MAX_BATCH_SIZE={largest} (or --max-batch-size {largest})"
        )
    return EngineResult(folder, "mounted"), str(record.get("precision", "?"))


def check_source_precision(source: BuildSource, target: BuildTarget) -> None:
    """Raise EngineCacheError when an exported folder's ONNX graph cannot give an engine of the
    target's precision: a float16 graph for an fp32 engine. (A float32 graph gives fp16 engines
    everywhere: ``dyhead-export tensorrt --fp16`` converts it first where the build is strongly
    typed.)

    Sources built from weights are exported by the build itself, at the target's precision.
    """
    if source.build_args[:1] != ("--onnx",):
        return
    import onnx

    from .tensorrt_build import EngineBuildError, check_graph_precision, graph_dcn_flavour, graph_precision

    folder = Path(source.build_args[1])
    if not (folder / "model.onnx").is_file():
        return  # the build says so
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    graph = graph_precision(model)
    if graph == "fp32":
        return
    try:
        check_graph_precision(graph, target.precision, target.tensorrt, folder, graph_dcn_flavour(model))
    except EngineBuildError as exc:
        raise EngineCacheError(str(exc)) from exc


def find_or_build(
    source: BuildSource,
    target: BuildTarget,
    root: Path,
    *,
    run: Callable[[Sequence[str]], int] = run_exporter,
    extra_build_args: Sequence[str] = (),
) -> EngineResult:
    """The cached engine of ``source`` for ``target`` under ``root``, built first when missing.

    The build is ``dyhead-export tensorrt`` with the source's flags: for weights it exports the
    ONNX graph, builds the engine and verifies it against PyTorch; a failed build or verification
    leaves nothing in the cache.

    Args:
        run: runs a command line and returns its exit status (default: a subprocess).
        extra_build_args: more ``dyhead-export tensorrt`` flags (e.g. ``--workspace 8``).
    """
    key = engine_key(source, target)
    final = root / key
    if (final / "model.plan").is_file():
        return EngineResult(final, "reused")
    check_source_precision(source, target)
    lock = root / ".locks" / f"{str(key).replace(os.sep, '__')}.lock"
    with exclusive(lock, "another process is building this engine"):
        if (final / "model.plan").is_file():  # built by another replica while this one waited
            return EngineResult(final, "reused")
        # Half-built folders of a start that died (the lock is ours: nobody else is building this).
        for stale in final.parent.glob(f".{final.name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = final.parent / f".{final.name}.partial-{os.getpid()}"
        staging.parent.mkdir(parents=True, exist_ok=True)
        command = [
            *exporter_command(), "tensorrt", *source.build_args, "--out", str(staging),
            "--profile", target.profile, *(["--fp16"] if target.precision == "fp16" else []),
            *extra_build_args,
        ]  # fmt: skip
        logger.warning(
            "no %s engine of %s for %s with TensorRT %s yet: building it once (minutes) into %s",
            target.precision, source.label, target.gpu, target.tensorrt, final,
        )  # fmt: skip
        started = time.monotonic()
        status = run(command)
        if status != 0 or not (staging / "model.plan").is_file():
            shutil.rmtree(staging, ignore_errors=True)
            raise EngineCacheError(
                f"building the engine failed (`dyhead-export tensorrt` exit status {status}; its output "
                "is above); nothing was cached"
            )
        key_record = {"model": source.label, "model_id": source.model_id, **asdict(target)}
        (staging / KEY_FILE).write_text(json.dumps(key_record, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)  # a leftover without model.plan (we hold the lock)
        os.replace(staging, final)
        return EngineResult(final, "built", time.monotonic() - started)
