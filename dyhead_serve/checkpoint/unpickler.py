"""The pickle readers: what a checkpoint's pickle may name, and nothing more is ever called.

A pickle names the functions it calls to rebuild its objects. :class:`RestrictedUnpickler`
(plain pickles such as Detectron2's ``.pkl`` files) and :class:`AllowlistedPickleModule` (torch.save
files that ``weights_only`` refuses, read by torch with our unpickler) look every name up in
allowlists (:func:`allowed_globals`: numpy arrays and scalars, tensors, plain containers) and
refuse any other with :class:`~dyhead_serve.checkpoint.report.CheckpointError` before anything
is called. The training state that mmengine pickles beside the weights becomes inert
placeholders, never imported or called.
"""

from __future__ import annotations

import codecs
import functools
import importlib
import io
import pickle
import re
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from dyhead_serve.checkpoint.pickle_budget import budget_of, probe_file
from dyhead_serve.checkpoint.report import CheckpointError

__all__ = ["REFUSAL", "AllowlistedPickleModule", "RestrictedUnpickler", "allowed_globals"]

REFUSAL = "the file contains arbitrary Python objects and we refuse to execute them"


_TRAINING_STATE_MODULES = ("mmengine", "mmcv", "mmdet")
_GETATTR = {("builtins", "getattr"), ("__builtin__", "getattr")}


class _Inert:
    """Stands in for a training framework's object: takes any arguments and state, keeps none."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class AllowlistedPickleModule:
    """What ``torch.load(pickle_module=...)`` needs: an ``Unpickler`` class (torch gives it the
    file and sets its ``persistent_load`` for the tensor data)."""

    __name__ = "dyhead_serve_allowlisted_pickle"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.inert: set[str] = set()
        module = self

        class Unpickler(pickle._Unpickler):  # Python's: its memo is a dict (see pickle_budget)
            def find_class(self, module_name: str, name: str) -> Any:
                return module.find_class(module_name, name)

        self.Unpickler = Unpickler

    def find_class(self, module_name: str, name: str) -> Any:
        if (module_name, name) in _TORCH_REBUILD:
            return _TORCH_REBUILD[(module_name, name)]
        storage = getattr(torch, name, None) if module_name == "torch" and name.endswith("Storage") else None
        if isinstance(storage, type):
            return storage  # a storage type, named inside the tensor data's ids
        if (module_name, name) in allowed_globals():
            return allowed_globals()[(module_name, name)]
        if module_name.split(".")[0] in _TRAINING_STATE_MODULES or (module_name, name) in _GETATTR:
            self.inert.add(f"{module_name}.{name}")
            return _Inert
        raise CheckpointError(f"checkpoint {self.path}: refusing global {module_name}.{name}: {REFUSAL}")


_TORCH_REBUILD: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
}


def _numpy_function(name: str, modules: tuple[str, ...]) -> Callable[..., Any]:
    """``name`` from the first of ``modules`` that exists: numpy 2 moved ``numpy.core`` to
    ``numpy._core`` and importing the old spelling warns."""
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {name} in any of {modules}")


@functools.cache
def allowed_globals() -> dict[tuple[str, str], Any]:
    """The globals a model-zoo pickle may name, by (module, name) as written in the file."""
    multiarray = ("numpy._core.multiarray", "numpy.core.multiarray")
    numeric = ("numpy._core.numeric", "numpy.core.numeric")
    reconstruct = _numpy_function("_reconstruct", multiarray)
    scalar = _numpy_function("scalar", multiarray)
    frombuffer = _numpy_function("_frombuffer", numeric)  # protocol 5 arrays
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): OrderedDict,
        # protocol 2 writes bytes as _codecs.encode(str, "latin1"), and b"" as bytes()
        ("_codecs", "encode"): codecs.encode,
        # tensors pickled with pickle.dump; their storage bytes are read by _load_storage_bytes
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    }
    for module in ("numpy._core", "numpy.core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{module}.multiarray", "scalar")] = scalar
        allowed[(f"{module}.numeric", "_frombuffer")] = frombuffer
    for builtin in (set, frozenset, bytes, bytearray, complex):
        # Python 2 pickles say __builtin__
        for module in ("builtins", "__builtin__"):
            allowed[(module, builtin.__name__)] = builtin
    return allowed


class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that rebuilds numpy arrays, tensors and plain containers, and nothing else.

    Python's unpickler rather than the C one: the C one sizes its memo by the largest index a
    pickle names, so that 9 bytes can ask for gigabytes (see
    :mod:`~dyhead_serve.checkpoint.pickle_budget`, which runs a file's pickle before this does).
    """

    def __init__(self, file: BinaryIO, path: Path) -> None:
        # latin1 as Detectron2 does: Python 2 str holding array bytes must map byte for byte.
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return self._load_storage_bytes
        try:
            return allowed_globals()[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"checkpoint {self.path}: refusing global {module}.{name}: {REFUSAL}"
            ) from None

    def _load_storage_bytes(self, data: bytes) -> Any:
        """Stands in for ``torch.storage._load_from_bytes``, which loads with weights_only=False."""
        # a legacy torch.save file of one storage: its pickles are probed as the file's were
        probe_file(io.BytesIO(data), self.path, budget_of(self.path), count=4)
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            match = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
            if match:
                raise CheckpointError(
                    f"checkpoint {self.path}: refusing global {match.group(1)} in a tensor: {REFUSAL}"
                ) from exc
            raise
