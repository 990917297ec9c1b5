"""ONNX -> TensorRT engine: ``model.plan`` with optimisation profiles and a timing cache, and a
``model.json`` that records which TensorRT, GPU and compute capability it was built for.

Written against the documented TensorRT Python API (>= 10.9): ``trt.Builder``, ``trt.OnnxParser``,
``IOptimizationProfile``, ``ITimingCache``, ``build_serialized_network``. Deformable convs are
either our plugin's nodes (``dyhead::ModulatedDeformConv2d``, registered by importing
:mod:`dyhead_serve.plugins.trt_plugin`; its AOT implementation is used unless ``plugin_impl="jit"``) or ONNX
``DeformConv`` nodes, which TensorRT's parser implements itself.

Precision, by TensorRT version:

- 10.12 and later (every 11.x): strongly typed networks (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``;
  weak typing is deprecated from 10.12 and 11 has no FP16 builder flag). Each tensor keeps the
  ONNX graph's type, so an fp16 engine is built from a float16 ONNX (``dyhead-export onnx
  --precision fp16``) and an fp32 engine from the float32 one, with TF32 off. A graph of the other
  precision is refused with the command that exports the right one.
- 10.9 to 10.11: weakly typed, as before: ``BuilderFlag.FP16`` lets TensorRT choose float16 per
  layer of the float32 graph; fp32 clears ``BuilderFlag.TF32``.

On TensorRT 11.1 to 11.2.1, whose AOT plugins leak a CUDA module per input-shape change
(NVIDIA/TensorRT#4849), our plugin is built with its JIT implementation (:func:`plugin_impl_for`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from dyhead_serve.errors import UserError
from dyhead_serve.export.external_weights import check_external_data
from dyhead_serve.plugins.schema import MDCN_SCHEMA
from dyhead_serve.runtime.artifact import ModelArtifact
from dyhead_serve.runtime.base import BackendError
from dyhead_serve.runtime.tensorrt_compat import (
    ENGINE_KEY,
    aot_plugins_leak,
    builds_strongly_typed,
    init_standard_plugins,
)

__all__ = [
    "PROFILES",
    "BuildOptions",
    "EngineBuildError",
    "ShapeProfile",
    "build_engine",
    "check_graph_precision",
    "fit_profile",
    "graph_dcn_flavour",
    "graph_input_dims",
    "graph_precision",
    "network_flags",
    "parse_shape",
    "plugin_impl_for",
    "set_plugin_impl",
    "timing_cache_name",
]

logger = logging.getLogger(__name__)


class EngineBuildError(UserError, RuntimeError):
    """The engine cannot be built (TensorRT missing, a parser error, a failed build, bad options)."""


Shape = tuple[int, int, int, int]


@dataclass(frozen=True)
class ShapeProfile:
    """Smallest, typical and largest ``images`` input, each (N, 3, H, W)."""

    min: Shape
    opt: Shape
    max: Shape

    def check(self, size_divisibility: int) -> None:
        """Raise EngineBuildError unless min <= opt <= max and H, W are multiples of the divisor."""
        for name, shape in (("min", self.min), ("opt", self.opt), ("max", self.max)):
            if shape[1] != 3 or min(shape) < 1:
                raise EngineBuildError(f"--{name}-shape must be Nx3xHxW with positive sizes, got {shape}")
            if shape[2] % size_divisibility or shape[3] % size_divisibility:
                raise EngineBuildError(
                    f"--{name}-shape {'x'.join(map(str, shape))}: height and width must be multiples of "
                    f"{size_divisibility} (the model pads images to them)"
                )
        if not all(a <= b <= c for a, b, c in zip(self.min, self.opt, self.max, strict=True)):
            raise EngineBuildError(f"profile shapes must satisfy min <= opt <= max, got {self}")

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


# Detectron2's test resize (short side 800, long side <= 1333) padded to 128: any orientation fits
# in 1408x1408; 896x1408 is a landscape COCO image.
PROFILES = {
    "coco": ShapeProfile((1, 3, 128, 128), (1, 3, 896, 1408), (1, 3, 1408, 1408)),
    "coco-batch4": ShapeProfile((1, 3, 128, 128), (4, 3, 896, 1408), (4, 3, 1408, 1408)),
    "coco-batch8": ShapeProfile((1, 3, 128, 128), (8, 3, 896, 1408), (8, 3, 1408, 1408)),
    "small": ShapeProfile((1, 3, 128, 128), (1, 3, 384, 512), (2, 3, 640, 640)),
    # mmdetection's Swin-L resizes to at most 2000 x 1200 and pads to 128: up to 2048x2048.
    "large": ShapeProfile((1, 3, 128, 128), (1, 3, 1280, 1920), (1, 3, 2048, 2048)),
}


def parse_shape(text: str) -> Shape:
    """``"1x3x896x1408"`` -> (1, 3, 896, 1408)."""
    parts = re.split(r"[x,]", text.strip())
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise ValueError(f"a shape is NxCxHxW, e.g. 1x3x896x1408; got {text!r}")
    n, c, h, w = (int(p) for p in parts)
    return n, c, h, w


def graph_input_dims(model: onnx.ModelProto, name: str = "images") -> list[int | str]:
    """The dimensions of a graph input: an int where the graph fixes it, its name where dynamic."""
    for value in model.graph.input:
        if value.name == name:
            return [
                d.dim_value if d.dim_value > 0 else (d.dim_param or "?")
                for d in value.type.tensor_type.shape.dim
            ]
    raise EngineBuildError(f"the ONNX model has no input {name!r}")


def fit_profile(profile: ShapeProfile, images_dims: list[int | str]) -> tuple[ShapeProfile, list[str]]:
    """The profile an engine of a graph can have: on each axis the graph fixes, its size replaces
    the asked range (a Faster R-CNN export has a batch of 1 whatever profile was asked).

    Args:
        profile: the asked profile.
        images_dims: the graph's ``images`` input, e.g. ``[1, 3, "height", "width"]``.

    Returns:
        The fitted profile and one sentence per axis it changed, to tell the user.
    """
    if len(images_dims) != 4 or (isinstance(images_dims[1], int) and images_dims[1] != 3):
        raise EngineBuildError(f"the ONNX model's images input is {images_dims}, not [N, 3, H, W]")
    bounds = [list(profile.min), list(profile.opt), list(profile.max)]
    notes = []
    for axis, what in ((0, "batch"), (2, "height"), (3, "width")):
        fixed = images_dims[axis]
        if not isinstance(fixed, int) or all(b[axis] == fixed for b in bounds):
            continue
        asked = f"{profile.min[axis]}..{profile.max[axis]}"
        for b in bounds:
            b[axis] = fixed
        chunks = "; a larger batch runs in chunks of it" if axis == 0 else ""
        notes.append(
            f"model.onnx fixes the {what} at {fixed}: the engine's profile takes {what} {fixed} "
            f"(the profile asked {asked}){chunks}"
        )
    low, opt, high = ((b[0], b[1], b[2], b[3]) for b in bounds)
    return ShapeProfile(low, opt, high), notes


@dataclass(frozen=True)
class BuildOptions:
    """How to build: precision, shapes, builder memory, plugin implementation, timing cache.

    ``timing_cache`` names the cache file; without it, ``timing_cache_dir`` holds one named by
    :func:`timing_cache_name`; with neither, no cache is kept.
    """

    profile: ShapeProfile
    fp16: bool = False
    workspace_gb: float = 4.0
    plugin_impl: str = "aot"  # "aot" | "jit"
    timing_cache: Path | None = None
    timing_cache_dir: Path | None = None


def graph_dcn_flavour(model: onnx.ModelProto) -> str | None:
    """``"plugin"`` (our plugin's nodes), ``"onnx"`` (DeformConv) or None (no deformable conv)."""
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    if (MDCN_SCHEMA.namespace, MDCN_SCHEMA.name) in ops:
        return "plugin"
    if any(op == "DeformConv" for _, op in ops):
        return "onnx"
    return None


def set_plugin_impl(model: onnx.ModelProto, impl: str) -> int:
    """Give each plugin node the ``aot`` attribute TensorRT's ONNX parser reads (1: AOT, 0: JIT).

    Used when the installed TensorRT lacks the network-wide PREFER_*_PYTHON_PLUGINS flags.
    Returns the number of nodes changed.
    """
    count = 0
    for node in model.graph.node:
        if node.domain == MDCN_SCHEMA.namespace and node.op_type == MDCN_SCHEMA.name:
            kept = [a for a in node.attribute if a.name != "aot"]
            del node.attribute[:]
            node.attribute.extend([*kept, onnx.helper.make_attribute("aot", int(impl == "aot"))])
            count += 1
    return count


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise EngineBuildError(
            "TensorRT is not installed: building an engine needs TensorRT >= 10.9 and an NVIDIA GPU "
            "(e.g. the GPU Docker image, or `pip install tensorrt` on a CUDA host)"
        ) from exc
    return trt


def gpu_identity() -> dict[str, Any]:
    """Name and compute capability of the current CUDA device (what an engine is tied to)."""
    import torch

    if not torch.cuda.is_available():
        raise EngineBuildError("building a TensorRT engine needs an NVIDIA GPU; none is visible")
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}


FLOAT16 = onnx.TensorProto.FLOAT16


def graph_precision(model: onnx.ModelProto) -> str:
    """``"fp16"`` when the graph holds any float16 tensor (an initializer, a constant, a typed
    value, a cast to float16), else ``"fp32"``: what a strongly typed build computes in.

    Reads types only, so a graph loaded without its external weights will do.
    """
    graph = model.graph
    if any(init.data_type == FLOAT16 for init in graph.initializer):
        return "fp16"
    values = [*graph.input, *graph.output, *graph.value_info]
    if any(v.type.tensor_type.elem_type == FLOAT16 for v in values):
        return "fp16"
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT16:
                return "fp16"
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT16:
                return "fp16"
    return "fp32"


def check_graph_precision(
    graph: str, asked: str, tensorrt_version: str, onnx_dir: str | Path, dcn: str | None = None
) -> None:
    """Raise EngineBuildError unless a graph of precision ``graph`` can give an ``asked`` engine
    on this TensorRT.

    A strongly typed build (TensorRT >= 10.12) computes in the graph's own types, so the two must
    match. A weakly typed one (10.9 to 10.11) makes fp16 from a float32 graph with its FP16 flag,
    but no build makes a float32 engine of a float16 graph (its weights are already rounded).
    """
    if graph == asked or (asked == "fp16" and not builds_strongly_typed(tensorrt_version)):
        return
    dcn_flag = f" --dcn {dcn}" if dcn in ("plugin", "onnx") else ""
    export = f"dyhead-export onnx --precision {asked}{dcn_flag} (same model, into another folder)"
    if asked == "fp16":
        raise EngineBuildError(
            f"{onnx_dir}/model.onnx is a float32 graph, and TensorRT {tensorrt_version} builds strongly "
            "typed networks (precision comes from the ONNX graph, not from a builder flag): an fp16 "
            f"engine needs the float16 ONNX. Export it with `{export}` and build from that folder, "
            "or build an fp32 engine from this one"
        )
    raise EngineBuildError(
        f"{onnx_dir}/model.onnx is a float16 graph: an fp32 engine needs the float32 ONNX. Export it "
        f"with `{export}` and build from that folder, or build an fp16 engine from this one"
    )


def plugin_impl_for(asked: str, tensorrt_version: str) -> tuple[str, str | None]:
    """The plugin implementation to build with, and a sentence for the user when it differs.

    On TensorRT 11.1 to 11.2.1 an AOT plugin leaks a CUDA module at every change of input shape
    (NVIDIA/TensorRT#4849): a server fed images of many sizes would run out of GPU memory. There
    the JIT implementation is used instead (the same Triton kernel launched from Python on
    TensorRT's stream, compiled once per tile since no scalar argument is specialised); slower per
    launch, but bounded, and the engine still builds and serves without the user changing anything.
    """
    if asked == "aot" and aot_plugins_leak(tensorrt_version):
        return "jit", (
            f"TensorRT {tensorrt_version} leaks a CUDA module per input-shape change for AOT plugins "
            "(NVIDIA/TensorRT#4849, 11.1 to 11.2.1): building our plugin's JIT implementation instead "
            "(it needs Triton, a C compiler and Python headers wherever the engine runs); TensorRT "
            "11.2.2 or later, or 10.14 to 10.16, build the AOT kernels"
        )
    return asked, None


def timing_cache_name(tensorrt_version: str, dcn: str | None, plugin_impl: str) -> str:
    """The timing cache file name of a build: its TensorRT version and, for graphs with our
    plugin, the Triton version, the plugin version and implementation, and a hash of the kernel
    tiles and source. A cache reused across any of these would replay tactic choices timed for
    another kernel set.
    """
    name = f"timing-trt{tensorrt_version}"
    if dcn == "plugin":
        import inspect

        from dyhead_serve.plugins import mdcn_kernel

        try:
            triton = importlib.metadata.version("triton")
        except importlib.metadata.PackageNotFoundError:
            triton = "none"
        tiles = ",".join(tile.name for tile in mdcn_kernel.TILES)
        source = inspect.getsource(mdcn_kernel._mdcn_forward)
        kernels = hashlib.sha256(f"{tiles}\n{source}".encode()).hexdigest()[:10]
        plugin = f"{MDCN_SCHEMA.namespace}-{MDCN_SCHEMA.name.lower()}{MDCN_SCHEMA.version}"
        name += f"-triton{triton}-{plugin}-{plugin_impl}-tiles{kernels}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name) + ".cache"


def network_flags(trt: Any, strongly_typed: bool, plugin_impl: str, dcn: str | None) -> tuple[int, bool]:
    """Network creation flags, and whether the plugin implementation is chosen by one of them.

    Flag values are read from ``trt`` (11.x renumbered them: STRONGLY_TYPED 0 and ignored,
    PREFER_JIT 1, PREFER_AOT 2).
    """
    creation = trt.NetworkDefinitionCreationFlag
    flags = 1 << int(creation.STRONGLY_TYPED) if strongly_typed else 0
    prefer = "PREFER_AOT_PYTHON_PLUGINS" if plugin_impl == "aot" else "PREFER_JIT_PYTHON_PLUGINS"
    by_flag = dcn == "plugin" and hasattr(creation, prefer)
    if by_flag:
        flags |= 1 << int(getattr(creation, prefer))
    return flags, by_flag


def configure_precision(trt: Any, config: Any, fp16: bool, strongly_typed: bool) -> None:
    """Builder flags for the precision: none for fp16 when strongly typed (the graph's float16
    types decide), FP16 on weakly typed 10.x; TF32 cleared for fp32 wherever the flag exists
    (float32 engines are verified against PyTorch at float32 tolerances, which TF32 would miss)."""
    if fp16:
        if not strongly_typed:
            config.set_flag(trt.BuilderFlag.FP16)
    elif hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)


def _parse(trt: Any, network: Any, model: onnx.ModelProto, onnx_path: Path, log: Any) -> None:
    """Parse the graph into ``network``, TensorRT's standard plugins registered first: the parser
    builds ONNX ``DeformConv`` from their ``ModulatedDeformConv2d`` creator."""
    try:
        init_standard_plugins(trt, log)
    except BackendError as exc:
        raise EngineBuildError(str(exc)) from exc
    parser = trt.OnnxParser(network, log)
    if not parser.parse(model.SerializeToString(), str(onnx_path)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT's ONNX parser rejected {onnx_path}:\n  " + "\n  ".join(errors))


def _add_profile(trt: Any, builder: Any, network: Any, config: Any, profile: ShapeProfile) -> None:
    opt_profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name == "images":
            opt_profile.set_shape(tensor.name, profile.min, profile.opt, profile.max)
        elif tensor.name == "image_sizes":
            opt_profile.set_shape(tensor.name, (profile.min[0], 2), (profile.opt[0], 2), (profile.max[0], 2))
        else:
            raise EngineBuildError(f"the ONNX model has an unexpected input {tensor.name!r}")
    config.add_optimization_profile(opt_profile)


def _load_timing_cache(config: Any, path: Path | None) -> Any:
    """The timing cache at ``path`` (a new one when there is none), set on ``config``."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    # A cache written by another TensorRT version or GPU is refused (ignore_mismatch=False): its
    # timings would pick tactics for the wrong device.
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise EngineBuildError(
            f"TensorRT refused the timing cache {path} (written by another TensorRT version or GPU, "
            "or damaged): delete it, or name another file with --timing-cache"
        )
    return cache


def build_engine(
    onnx_dir: str | Path,
    out_dir: str | Path,
    options: BuildOptions,
    on_step: Callable[[str], None] | None = None,
) -> Path:
    """Build ``out_dir/model.plan`` from ``onnx_dir/model.onnx`` and write ``out_dir/model.json``.

    The optimisation profile is ``options.profile`` fitted to the graph (:func:`fit_profile`): an
    axis the graph fixes keeps its size, and ``on_step`` is told so. model.json records the
    profile built.

    Returns the path of model.plan.
    """
    step = on_step or (lambda _: None)
    onnx_dir, out = Path(onnx_dir), Path(out_dir)
    onnx_path = onnx_dir / "model.onnx"
    if not onnx_path.is_file():
        raise EngineBuildError(f"{onnx_dir}: no model.onnx (export one with `dyhead-export onnx`)")
    artifact = ModelArtifact.load(onnx_dir / "model.json")
    options.profile.check(artifact.input_spec.size_divisibility)
    if options.plugin_impl not in ("aot", "jit"):
        raise EngineBuildError(f"plugin implementation must be aot or jit, got {options.plugin_impl!r}")
    check_external_data(onnx.load(str(onnx_path), load_external_data=False), onnx_dir)
    model = onnx.load(str(onnx_path))
    images_dims = graph_input_dims(model)
    profile, notes = fit_profile(options.profile, images_dims)
    for note in notes:
        logger.warning("%s", note)
        step(note)
    trt = _import_tensorrt()
    version = str(trt.__version__)
    dcn = graph_dcn_flavour(model)
    precision = "fp16" if options.fp16 else "fp32"
    check_graph_precision(graph_precision(model), precision, version, onnx_dir, dcn)
    identity = gpu_identity()
    strongly_typed = builds_strongly_typed(version)
    plugin_impl = options.plugin_impl
    if dcn == "plugin":
        from dyhead_serve.plugins import trt_plugin  # noqa: F401  (registers dyhead::ModulatedDeformConv2d)

        plugin_impl, why = plugin_impl_for(options.plugin_impl, version)
        if why:
            logger.warning("%s", why)
            step(why)

    log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(log)
    flags, impl_by_flag = network_flags(trt, strongly_typed, plugin_impl, dcn)
    if dcn == "plugin" and not impl_by_flag:
        set_plugin_impl(model, plugin_impl)
    network = builder.create_network(flags)
    step(f"parsing model.onnx ({'strongly' if strongly_typed else 'weakly'} typed, {precision})")
    _parse(trt, network, model, onnx_path, log)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * (1 << 30)))
    configure_precision(trt, config, options.fp16, strongly_typed)
    _add_profile(trt, builder, network, config, profile)
    cache_path = options.timing_cache
    if cache_path is None and options.timing_cache_dir is not None:
        cache_path = options.timing_cache_dir / timing_cache_name(version, dcn, plugin_impl)
    cache = _load_timing_cache(config, cache_path)
    step("building the engine (minutes: TensorRT times its kernels)")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError("TensorRT failed to build the engine (see its log above)")
    out.mkdir(parents=True, exist_ok=True)
    plan = out / "model.plan"
    plan.write_bytes(bytes(serialized))
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_bytes(bytes(cache.serialize()))
    # Under its own key: a folder may hold model.onnx and model.plan with one model.json.
    artifact.provenance = {
        **artifact.provenance,
        ENGINE_KEY: {
            "tensorrt": version,
            **identity,
            "precision": precision,
            "strongly_typed": strongly_typed,
            "profile": profile.to_dict(),
            # the graph's own batch (a Faster R-CNN export's is 1); None: dynamic
            "fixed_batch": images_dims[0] if isinstance(images_dims[0], int) else None,
            "dcn": dcn or "none",
            "plugin_impl": plugin_impl if dcn == "plugin" else None,
            "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        },
    }
    artifact.save(out / "model.json")
    logger.info("wrote %s (%d bytes) for %s", plan, plan.stat().st_size, identity["gpu"])
    return plan
