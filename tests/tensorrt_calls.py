"""A recording stand-in for the ``tensorrt`` module, for tests of the order in which our build
and load code calls TensorRT (it builds and loads nothing: what TensorRT itself does is tested by
the ``tensorrt``-marked tests on a machine that has it)."""

from __future__ import annotations

from typing import Any


class TensorRTCalls:
    """Records ``init_libnvinfer_plugins``, ``OnnxParser(...).parse`` and
    ``Runtime(...).deserialize_cuda_engine`` calls in ``calls``, in order."""

    def __init__(self, plugins_ok: bool = True) -> None:
        self.calls: list[str] = []
        self.plugins_ok = plugins_ok

    def init_libnvinfer_plugins(self, logger: Any, namespace: str) -> bool:
        self.calls.append(f"init_libnvinfer_plugins({namespace!r})")
        return self.plugins_ok

    def OnnxParser(self, network: Any, logger: Any) -> Any:  # noqa: N802 (TensorRT's name)
        self.calls.append("OnnxParser")
        calls = self.calls

        class Parser:
            num_errors = 0

            def parse(self, data: bytes, path: str) -> bool:
                calls.append("parse")
                return True

        return Parser()

    def Runtime(self, logger: Any) -> Any:  # noqa: N802 (TensorRT's name)
        self.calls.append("Runtime")
        calls = self.calls

        class Runtime:
            def deserialize_cuda_engine(self, plan: bytes) -> str:
                calls.append("deserialize_cuda_engine")
                return "engine"

        return Runtime()
