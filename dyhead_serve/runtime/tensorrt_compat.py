"""Whether a TensorRT engine may run here: engines are tied to the TensorRT version and the GPU
(compute capability) they were built for, and loading a foreign one must say "rebuild", not crash.

Plain Python (no TensorRT import), so the checks are testable anywhere.
"""

from __future__ import annotations

from typing import Any

from dyhead_serve.runtime.base import BackendError

__all__ = ["ENGINE_KEY", "check_engine_compatibility", "rebuild_hint"]

ENGINE_KEY = "tensorrt_engine"  # model.json provenance key written by `dyhead-export tensorrt`


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
    built_for = str(record.get("compute_capability", "?"))
    if built_for != compute_capability:
        raise BackendError(
            f"{model_dir}/model.plan was built for a {record.get('gpu', '?')} (compute capability "
            f"{built_for}), this GPU is a {gpu} ({compute_capability}); {rebuild_hint(model_dir)}"
        )
    return record
