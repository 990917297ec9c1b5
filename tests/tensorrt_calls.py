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


# Enum values as TensorRT's headers declare them (include/NvInfer.h at tags v10.11, v10.14 and
# v11.1 of NVIDIA/TensorRT): 11.0 deprecated STRONGLY_TYPED (always on, value 0, ignored),
# renumbered the plugin preferences and removed the FP16 builder flag.
_CREATION_FLAGS = {
    10: {"STRONGLY_TYPED": 1, "PREFER_JIT_PYTHON_PLUGINS": 2, "PREFER_AOT_PYTHON_PLUGINS": 3},
    11: {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2},
}
_BUILDER_FLAGS = {10: {"FP16": 0, "INT8": 1, "TF32": 6, "BF16": 17}, 11: {"TF32": 6}}


class TensorRTFlags:
    """A recording stand-in for the flag enums of one TensorRT version and a builder config that
    records ``set_flag`` / ``clear_flag`` calls (for tests of which flags our build asks for; what
    TensorRT does with them is tested only where it is installed)."""

    def __init__(self, version: str) -> None:
        self.__version__ = version
        major = int(version.split(".")[0])
        self.NetworkDefinitionCreationFlag = type("NetworkDefinitionCreationFlag", (), _CREATION_FLAGS[major])
        self.BuilderFlag = type("BuilderFlag", (), {name: name for name in _BUILDER_FLAGS[major]})
        self.calls: list[str] = []

    def config(self) -> Any:
        calls = self.calls

        class Config:
            def set_flag(self, flag: str) -> None:
                calls.append(f"set_flag({flag})")

            def clear_flag(self, flag: str) -> None:
                calls.append(f"clear_flag({flag})")

        return Config()
