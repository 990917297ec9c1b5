"""One line naming what a benchmark ran on: package versions, CPU and threads, so that every
table in docs/benchmarks.md says which versions produced it; and the torch model a benchmark
measures."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dyhead_serve.runtime.torch_backend import TorchBackend


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(threads: int | None = None) -> str:
    """``dyhead-serve 0.1.0 | torch ... | onnxruntime ... | Python ... | CPU ... x N``."""
    packages = ("dyhead-serve", "torch", "torchvision", "onnxruntime", "onnx", "numpy", "pillow")
    parts = [f"{name} {_version(name)}" for name in packages]
    parts.append(f"Python {platform.python_version()}")
    cpu = f"{_cpu_model()}, {os.cpu_count()} cores"
    if threads is not None:
        cpu += f", {threads} threads"
    parts.append(cpu)
    return " | ".join(parts)


def torch_backend_for(name: str) -> TorchBackend:
    """The torch backend a benchmark measures: the embedded model with its trained weights
    (``default``), any other zoo or config name built with random weights (timing does not depend
    on them; nothing is downloaded)."""
    from dyhead_serve.runtime.loader import load_backend, load_torch_backend
    from dyhead_serve.runtime.options import ModelOptions
    from dyhead_serve.runtime.torch_backend import TorchBackend

    if name == "default":
        backend = load_backend(ModelOptions("default", backend="torch", device="cpu"))
        assert isinstance(backend, TorchBackend)
        return backend
    return load_torch_backend(name, None, device="cpu")
