"""Whether a TensorRT engine may run here, and what loading one needs: engines are tied to the
TensorRT version and the GPU (compute capability) they were built for, and loading a foreign one
must say "rebuild", not crash; TensorRT's standard plugins must be registered on both sides; inputs
must fit the engine's profile and the model's size divisibility.

Plain Python (no TensorRT import: the functions that use TensorRT take its module), so the checks
are testable anywhere.
"""

from __future__ import annotations

import re
from typing import Any

from dyhead_serve.runtime.base import BackendError

__all__ = [
    "AOT_LEAK_VERSIONS",
    "ENGINE_KEY",
    "STRONGLY_TYPED_SINCE",
    "aot_plugins_leak",
    "builds_strongly_typed",
    "check_engine_compatibility",
    "check_input_shape",
    "deserialize_engine",
    "init_standard_plugins",
    "rebuild_hint",
    "tensorrt_version",
]

ENGINE_KEY = "tensorrt_engine"  # model.json provenance key written by `dyhead-export tensorrt`

# Weak typing (precision chosen by builder flags) is deprecated from TensorRT 10.12 and gone in 11
# (the FP16 builder flag no longer exists); from 10.12 on we build strongly typed networks, whose
# precision is the ONNX graph's own.
STRONGLY_TYPED_SINCE = (10, 12)
# AOT (PTX) plugins leak a CUDA module per input-shape change on these versions, first and last
# inclusive (NVIDIA/TensorRT#4849, reported on 11.1 and 11.2.1.2).
AOT_LEAK_VERSIONS = ((11, 1), (11, 2, 1))


def tensorrt_version(text: str) -> tuple[int, ...]:
    """``"10.14.1.48"`` -> (10, 14, 1, 48); the leading numeric parts of a version string."""
    parts = []
    for part in str(text).split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        parts.append(int(match.group(0)))
        if match.end() < len(part):  # "1rc1": the number ends the version
            break
    if not parts:
        raise ValueError(f"not a TensorRT version: {text!r}")
    return tuple(parts)


def builds_strongly_typed(version: str) -> bool:
    """Whether we build strongly typed networks on this TensorRT (10.12 and later, every 11.x)."""
    return tensorrt_version(version)[:2] >= STRONGLY_TYPED_SINCE


def aot_plugins_leak(version: str) -> bool:
    """Whether this TensorRT leaks a CUDA module per shape change of an AOT plugin (11.1 to
    11.2.1; NVIDIA/TensorRT#4849). Compared on major.minor.patch."""
    first, last = AOT_LEAK_VERSIONS
    key = (*tensorrt_version(version), 0, 0)[:3]
    return (*first, 0)[:3] <= key <= (*last, 0)[:3]


def rebuild_hint(model_dir: str) -> str:
    return (
        f"rebuild it on this machine: dyhead-export tensorrt --onnx {model_dir} --out {model_dir} "
        "(the ONNX model and model.json travel; engines do not)"
    )


def check_engine_compatibility(
    provenance: dict[str, Any], model_dir: str, tensorrt_version: str, gpu: str, compute_capability: str
) -> dict[str, Any]:
    """Compare what model.json says the engine was built for with this machine.

    Returns the engine record; raises :class:`BackendError` naming the difference and how to
    rebuild when the TensorRT version (major.minor.patch) or the compute capability differ. A
    different GPU name with the same compute capability only logs (TensorRT accepts it, timings
    may be off).
    """
    record = provenance.get(ENGINE_KEY)
    if not isinstance(record, dict):
        raise BackendError(
            f"{model_dir}/model.json does not describe a TensorRT engine; {rebuild_hint(model_dir)}"
        )
    built_with = str(record.get("tensorrt", "?"))
    if built_with.split(".")[:3] != tensorrt_version.split(".")[:3]:
        raise BackendError(
            f"{model_dir}/model.plan was built with TensorRT {built_with}, this is TensorRT "
            f"{tensorrt_version}; {rebuild_hint(model_dir)}"
        )
    if record.get("plugin_impl") == "aot" and aot_plugins_leak(tensorrt_version):
        raise BackendError(
            f"{model_dir}/model.plan runs our plugin's AOT kernels, which TensorRT {tensorrt_version} "
            "leaks a CUDA module for at each change of input shape (NVIDIA/TensorRT#4849, 11.1 to "
            f"11.2.1); {rebuild_hint(model_dir)} (on this version the build uses the JIT kernels), "
            "or use TensorRT 11.2.2 or later, or 10.14 to 10.16"
        )
    built_for = str(record.get("compute_capability", "?"))
    if built_for != compute_capability:
        raise BackendError(
            f"{model_dir}/model.plan was built for a {record.get('gpu', '?')} (compute capability "
            f"{built_for}), this GPU is a {gpu} ({compute_capability}); {rebuild_hint(model_dir)}"
        )
    return record


def init_standard_plugins(trt: Any, logger: Any) -> None:
    """Register TensorRT's standard plugins (libnvinfer_plugin) in the default namespace.

    Needed before parsing and before deserialising: the ONNX parser builds ``DeformConv`` nodes
    from the standard ``ModulatedDeformConv2d`` plugin, and an engine holding such layers finds
    their creator in the registry when it is loaded. Our own plugin's AOT layers need nothing.

    Args:
        trt: the ``tensorrt`` module.
        logger: a ``trt.ILogger``.
    """
    if not trt.init_libnvinfer_plugins(logger, ""):
        raise BackendError(
            "TensorRT could not register its standard plugins (libnvinfer_plugin): check that the "
            "TensorRT installation is complete (the GPU image has it)"
        )


def deserialize_engine(trt: Any, logger: Any, plan: bytes) -> tuple[Any, Any]:
    """(runtime, engine) of a serialised engine, the standard plugins registered first.

    The engine is None when TensorRT cannot read ``plan``; keep the runtime alive with it.
    """
    init_standard_plugins(trt, logger)
    runtime = trt.Runtime(logger)
    return runtime, runtime.deserialize_cuda_engine(plan)


def check_input_shape(
    name: str, shape: tuple[int, ...], low: tuple[int, ...], high: tuple[int, ...], size_divisibility: int
) -> None:
    """Raise BackendError unless ``shape`` lies in the profile [low, high] and, for ``images``,
    height and width are multiples of the model's size divisibility.

    Args:
        name: the input's name (``images`` is Tensor[N, 3, H, W]).
        shape: the shape to run.
        low, high: the engine profile's smallest and largest shapes of this input.
        size_divisibility: the model's (128 for P3-P7 detectors).
    """
    divisor = size_divisibility
    if name == "images" and len(shape) == 4 and (shape[2] % divisor or shape[3] % divisor):
        raise BackendError(
            f"images of {shape[2]}x{shape[3]}: height and width must be multiples of {size_divisibility} "
            "(the model's size divisibility; preprocessing pads images to them)"
        )
    if len(shape) != len(low) or any(s < a or s > b for s, a, b in zip(shape, low, high, strict=True)):
        raise BackendError(
            f"input {name!r} of shape {list(shape)} is outside the engine's profile "
            f"({list(low)} .. {list(high)}); rebuild with a larger --max-shape or use smaller images"
        )
