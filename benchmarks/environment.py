"""One line naming what a benchmark ran on: package versions, CPU and threads, so that every
table in docs/benchmarks.md says which versions produced it."""

from __future__ import annotations

import importlib.metadata
import os
import platform


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
