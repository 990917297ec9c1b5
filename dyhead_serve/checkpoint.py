"""Read official checkpoints without executing pickled code, and load them with a clear report.

Files are named ``.pth``, ``.pt`` or ``.pkl``, but the name does not say how they are written
(the official Swin-T backbone ``swin_tiny_patch4_window7_224_d2.pth`` is a plain pickle), so the
format is read from the first bytes (:func:`checkpoint_format`):

- :func:`torch.save` files, a zip archive (it starts with ``PK``) or the legacy format (a pickle
  that starts with torch's magic number): read with ``torch.load(..., weights_only=True)``. The file
  holds either a bare state dict, Detectron2's ``DetectionCheckpointer`` dict, whose ``model``
  entry is the state dict (its ``optimizer``, ``scheduler``, ``iteration`` and ``trainer``
  entries are ignored), or an mmdetection / mmengine checkpoint, whose ``state_dict`` entry is
  (``meta`` and the rest are ignored). Files that ``weights_only`` refuses are read once more by
  our own allowlists (numpy arrays and scalars, as for plain pickles); the training state that
  mmengine pickles beside the weights (message-hub buffers) becomes inert placeholders, never
  imported or called.
- safetensors files (a JSON header and raw bytes; the embedded default model is one): read by
  :mod:`dyhead_serve.safetensors_file`, which checks every field of the header first.
- plain pickles, such as Detectron2 model-zoo ``.pkl`` files (often written by Python 2 from
  Caffe2): a dict, optionally with a ``model`` entry, of numpy arrays (or tensors). They are read
  with a restricted unpickler that can rebuild arrays, tensors and plain containers and nothing
  else.

A pickle names the functions it calls to rebuild its objects; a file that names any function
outside those allowlists is refused with :class:`CheckpointError` before anything is called.

:func:`load_state_dict` then compares the tensors with ``model.state_dict()`` (parameters and
persistent buffers, integer buffers such as Swin's ``relative_position_index`` included) and
either loads them or raises :class:`CheckpointMismatchError` carrying a :class:`LoadReport`. A
checkpoint family that names tensors otherwise (mmdetection) is loaded through a
:class:`KeyMap`, and its report speaks the file's names.
"""

from __future__ import annotations

import codecs
import enum
import functools
import importlib
import io
import logging
import os
import pickle
import pickletools
import re
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from dyhead_serve.errors import UserError
from dyhead_serve.safetensors_file import SafetensorsError, is_safetensors, read_safetensors

__all__ = [
    "CheckpointError",
    "CheckpointFormat",
    "CheckpointMismatchError",
    "KeyMap",
    "LoadReport",
    "ShapeMismatch",
    "checkpoint_format",
    "compare_state_dicts",
    "load_state_dict",
    "read_state_dict",
]

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".pkl", ".safetensors")
_ZIP_MAGIC = b"PK\x03\x04"
# The first object a legacy (non-zip) torch.save file pickles (torch.serialization.MAGIC_NUMBER).
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# Lines per section of LoadReport.format() before "... and N more".
MAX_REPORT_LINES = 20
_DDP_PREFIX = "module."
_REFUSAL = "the file contains arbitrary Python objects and we refuse to execute them"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read: missing, corrupt, or holding code we refuse to run.

    The message is one line naming the file and the reason.
    """


@dataclass(frozen=True)
class ShapeMismatch:
    """A tensor present in both the checkpoint and the model, with different shapes."""

    name: str
    file_shape: tuple[int, ...]
    model_shape: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.name}: {self.file_shape} in file vs {self.model_shape} in model"


@dataclass
class LoadReport:
    """How a checkpoint's tensors match a model's ``state_dict()``.

    Attributes:
        missing_keys: in the model but not in the checkpoint, in the model's order.
        unexpected_keys: in the checkpoint but not in the model, in the checkpoint's order.
        shape_mismatches: in both, with different shapes; these are never loaded.
        source: where the checkpoint came from (a path), for messages.
        hint: a last line for the reader (what the mismatch suggests), or empty.
    """

    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    shape_mismatches: list[ShapeMismatch] = field(default_factory=list)
    source: str = "the given state dict"
    hint: str = ""

    @property
    def ok(self) -> bool:
        """True when every model tensor has a same-shaped counterpart and nothing is left over."""
        return not (self.missing_keys or self.unexpected_keys or self.shape_mismatches)

    def format(self) -> str:
        """A readable multi-line report.

        Keys are grouped by their parent module (``head.cls_logits.{weight, bias}``) and each
        section shows at most :data:`MAX_REPORT_LINES` lines, then ``... and N more``.
        """
        if self.ok:
            return f"checkpoint {self.source} matches the model"
        counts = ", ".join(
            _plural(n, what)
            for n, what in (
                (len(self.missing_keys), "missing key"),
                (len(self.unexpected_keys), "unexpected key"),
                (len(self.shape_mismatches), "shape mismatch"),
            )
            if n
        )
        lines = [f"checkpoint {self.source} does not match the model: {counts}"]
        lines += _section(
            f"missing keys (in the model, not in the checkpoint): {len(self.missing_keys)}",
            _group_keys(self.missing_keys),
        )
        lines += _section(
            f"unexpected keys (in the checkpoint, not in the model): {len(self.unexpected_keys)}",
            _group_keys(self.unexpected_keys),
        )
        lines += _section(
            f"shape mismatches (not loaded): {len(self.shape_mismatches)}",
            [str(mismatch) for mismatch in self.shape_mismatches],
        )
        if self.hint:
            lines.append(self.hint)
        return "\n".join(lines)


@dataclass(frozen=True)
class KeyMap:
    """How a checkpoint family names a model's tensors.

    Attributes:
        to_file: model ``state_dict()`` name -> name in the checkpoint, for every model tensor.
        optional: checkpoint names that may be present and are ignored (mmdetection's
            ``num_batches_tracked`` counters of BatchNorm layers our frozen norms do not keep).
        family: the checkpoint family, for messages (``"mmdetection"``).
    """

    to_file: dict[str, str]
    optional: frozenset[str] = frozenset()
    family: str = "mmdetection"

    def to_model(self) -> dict[str, str]:
        """Checkpoint name -> model name."""
        return {file_key: model_key for model_key, file_key in self.to_file.items()}


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose tensors do not match the model; ``report`` says how."""

    def __init__(self, report: LoadReport) -> None:
        super().__init__(report.format())
        self.report = report


# --------------------------------------------------------------------------------------------
# Reading


class CheckpointFormat(enum.Enum):
    """How a checkpoint file is written, whatever its suffix."""

    TORCH = "torch.save file"  # zip archive, or the legacy pickle that starts with the magic number
    PICKLE = "plain pickle"  # pickle.dump of a dict, as Detectron2's model-zoo .pkl files
    SAFETENSORS = "safetensors file"  # a JSON header and raw tensor bytes (no pickle at all)


def checkpoint_format(path: str | os.PathLike[str]) -> CheckpointFormat:
    """Tell a :func:`torch.save` file from a plain pickle by its first bytes; nothing is run.

    A file that is neither (empty, truncated, random bytes) is called a plain pickle, which
    the restricted unpickler then refuses as corrupt.

    Raises:
        CheckpointError: the file cannot be opened.
    """
    if is_safetensors(path):
        return CheckpointFormat.SAFETENSORS
    try:
        with Path(path).open("rb") as file:
            if file.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC:
                return CheckpointFormat.TORCH
            file.seek(0)
            legacy = _starts_with_torch_magic(file)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read ({_reason(exc)})") from exc
    return CheckpointFormat.TORCH if legacy else CheckpointFormat.PICKLE


def _starts_with_torch_magic(file: BinaryIO) -> bool:
    """Whether the pickle's first value is torch's magic number, read opcode by opcode (a few
    bytes) without executing anything."""
    try:
        for opcode, arg, _ in pickletools.genops(file):
            if opcode.name not in ("PROTO", "FRAME"):
                return isinstance(arg, int) and arg == _TORCH_LEGACY_MAGIC
    except ValueError:  # not a pickle
        return False
    return False


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read the model tensors of a checkpoint file, on the CPU, without running pickled code.

    Args:
        path: a ``.pth``, ``.pt``, ``.pkl`` or ``.safetensors`` file, read by its contents
            whatever the suffix: a :func:`torch.save` file (bare state dict or a dict with a
            ``model`` entry), a plain pickle such as a Detectron2 ``.pkl`` (dict of numpy arrays,
            optionally under ``model``) or a safetensors file.

    Returns:
        Tensor name -> tensor, in file order. Non-tensor entries (``__author__``,
        ``matching_heuristics``, ...) are dropped, and a ``module.`` prefix that every key
        carries (a model saved from DistributedDataParallel) is stripped.

    Raises:
        CheckpointError: the file is missing, unreadable, corrupt, of an unknown suffix, holds
            no tensors, or names a Python global outside the allowlists.
    """
    path = Path(path)
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        known = ", ".join(CHECKPOINT_SUFFIXES)
        raise CheckpointError(f"checkpoint {path}: unknown suffix {path.suffix!r} (expected one of {known})")
    if not path.is_file():
        reason = "is a directory, not a file" if path.is_dir() else "no such file"
        raise CheckpointError(f"checkpoint {path}: {reason}")

    kind = checkpoint_format(path)
    if kind is CheckpointFormat.SAFETENSORS:
        try:
            contents: Any = read_safetensors(path)
        except (SafetensorsError, OSError) as exc:
            raise CheckpointError(f"checkpoint {path}: {exc}") from exc
    else:
        contents = _torch_load(path) if kind is CheckpointFormat.TORCH else _pickle_load(path)
    state_dict = _strip_ddp_prefix(_extract_tensors(contents, path), path)
    logger.debug("read %d tensors from %s", len(state_dict), path)
    return state_dict


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only names the global it refused, in wording that changes between versions
        # ("Unsupported global: GLOBAL x.y", "unsupported GLOBAL x.y whose module x is blocked").
        match = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
        if match:
            # Training checkpoints (mmengine's) pickle numpy values and the trainer's state beside
            # the weights: read them again with our own allowlists, training state made inert.
            return _torch_load_allowlisted(path, refused=match.group(1), cause=exc)
        raise CheckpointError(f"checkpoint {path}: corrupt or not a checkpoint ({_reason(exc)})") from exc
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read ({_reason(exc)})") from exc
    except Exception as exc:  # any other failure to parse the file is a corrupt file
        raise CheckpointError(f"checkpoint {path}: corrupt or not a checkpoint ({_reason(exc)})") from exc


def _torch_load_allowlisted(path: Path, refused: str, cause: Exception) -> Any:
    """Read a :func:`torch.save` file with :class:`_TorchFileUnpickler` (torch still reads the
    tensor data); only a zip-format file, as every torch since 1.6 writes."""
    if checkpoint_format(path) is not CheckpointFormat.TORCH or not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path}: refusing global {refused}: {_REFUSAL}") from cause
    module = _UnpicklerModule(path)
    try:
        contents = torch.load(path, map_location="cpu", weights_only=False, pickle_module=module)
    except CheckpointError:
        raise
    except Exception as exc:  # the unpickler and numpy raise many types on malformed data
        raise CheckpointError(f"checkpoint {path}: corrupt or not a checkpoint ({_reason(exc)})") from exc
    if module.inert:
        logger.info("%s: training state not read (%s)", path, ", ".join(sorted(module.inert)))
    return contents


# Modules of the training frameworks whose objects mmdetection / mmengine checkpoints pickle
# beside the weights (the message hub's history buffers; the bound methods those keep are rebuilt
# with getattr). Reading such a file, each of these globals becomes an inert placeholder: nothing
# of theirs is imported or called, and what they would have built is dropped with the other
# non-tensor entries.
_TRAINING_STATE_MODULES = ("mmengine", "mmcv", "mmdet")
_GETATTR = {("builtins", "getattr"), ("__builtin__", "getattr")}


class _Inert:
    """Stands in for a training framework's object: takes any arguments and state, keeps none."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _UnpicklerModule:
    """What ``torch.load(pickle_module=...)`` needs: an ``Unpickler`` class (torch gives it the
    file and sets its ``persistent_load`` for the tensor data)."""

    __name__ = "dyhead_serve_allowlisted_pickle"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.inert: set[str] = set()
        module = self

        class Unpickler(pickle.Unpickler):
            def find_class(self, module_name: str, name: str) -> Any:
                return module.find_class(module_name, name)

        self.Unpickler = Unpickler

    def find_class(self, module_name: str, name: str) -> Any:
        if (module_name, name) in _TORCH_REBUILD:
            return _TORCH_REBUILD[(module_name, name)]
        storage = getattr(torch, name, None) if module_name == "torch" and name.endswith("Storage") else None
        if isinstance(storage, type):
            return storage  # a storage type, named inside the tensor data's ids
        if (module_name, name) in _allowed_globals():
            return _allowed_globals()[(module_name, name)]
        if module_name.split(".")[0] in _TRAINING_STATE_MODULES or (module_name, name) in _GETATTR:
            self.inert.add(f"{module_name}.{name}")
            return _Inert
        raise CheckpointError(f"checkpoint {self.path}: refusing global {module_name}.{name}: {_REFUSAL}")


_TORCH_REBUILD: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
}


def _pickle_load(path: Path) -> Any:
    try:
        with path.open("rb") as file:
            return _RestrictedUnpickler(file, path).load()
    except CheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read ({_reason(exc)})") from exc
    except Exception as exc:  # the unpickler and numpy raise many types on malformed data
        raise CheckpointError(f"checkpoint {path}: corrupt or not a pickle ({_reason(exc)})") from exc


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
def _allowed_globals() -> dict[tuple[str, str], Any]:
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


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays, tensors and plain containers, and nothing else."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        # latin1 as Detectron2 does: Python 2 str holding array bytes must map byte for byte.
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return self._load_storage_bytes
        try:
            return _allowed_globals()[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"checkpoint {self.path}: refusing global {module}.{name}: {_REFUSAL}"
            ) from None

    def _load_storage_bytes(self, data: bytes) -> Any:
        """Stands in for ``torch.storage._load_from_bytes``, which loads with weights_only=False."""
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            match = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
            if match:
                raise CheckpointError(
                    f"checkpoint {self.path}: refusing global {match.group(1)} in a tensor: {_REFUSAL}"
                ) from exc
            raise


# --------------------------------------------------------------------------------------------
# From file contents to a flat state dict


def _extract_tensors(contents: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(contents, Mapping):
        raise CheckpointError(
            f"checkpoint {path}: expected a dict of tensors, found {type(contents).__name__}"
        )
    for entry in ("model", "state_dict"):  # Detectron2's checkpointer; mmdetection / mmengine
        if isinstance(contents.get(entry), Mapping):
            others = [str(key) for key in contents if key != entry]
            if others:
                logger.debug("%s: using the %r entry, ignoring %s", path, entry, ", ".join(others))
            contents = contents[entry]
            break

    tensors: dict[str, torch.Tensor] = {}
    for key, value in contents.items():
        tensor = _as_tensor(value)
        if tensor is None or not isinstance(key, str):
            logger.debug("%s: dropping non-tensor entry %r (%s)", path, key, type(value).__name__)
            continue
        tensors[key] = tensor
    if not tensors:
        raise CheckpointError(f"checkpoint {path}: holds no tensors")
    return tensors


def _as_tensor(value: Any) -> torch.Tensor | None:
    """A CPU tensor for a tensor or a numeric numpy array; None for anything else."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if not isinstance(value, np.ndarray):
        return None
    array = value
    if not array.dtype.isnative:  # torch reads native byte order only
        array = array.astype(array.dtype.newbyteorder("="))
    if not array.flags.writeable:  # arrays rebuilt from bytes are read-only
        array = array.copy()
    try:
        return torch.from_numpy(array)
    except TypeError:  # object, string, ... arrays
        return None


def _strip_ddp_prefix(state_dict: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    if not all(key.startswith(_DDP_PREFIX) for key in state_dict):
        return state_dict
    logger.info("%s: stripping the %r prefix of a DistributedDataParallel checkpoint", path, _DDP_PREFIX)
    return {key[len(_DDP_PREFIX) :]: tensor for key, tensor in state_dict.items()}


# --------------------------------------------------------------------------------------------
# Comparing and loading


def compare_state_dicts(
    checkpoint: Mapping[str, torch.Tensor],
    model_state: Mapping[str, torch.Tensor],
    *,
    source: str = "the given state dict",
    optional: frozenset[str] = frozenset(),
) -> LoadReport:
    """Compare a checkpoint's tensors with a model's ``state_dict()`` by name and shape.

    ``optional`` names checkpoint entries that are neither expected nor unexpected. A scalar
    stored as a 0-d tensor matches a one-element ``[1]`` tensor (mmdetection's ``Scale``).
    """
    report = LoadReport(source=source)
    for name, target in model_state.items():
        if name not in checkpoint:
            report.missing_keys.append(name)
        elif not _same_shape(checkpoint[name], target):
            report.shape_mismatches.append(
                ShapeMismatch(name, tuple(checkpoint[name].shape), tuple(target.shape))
            )
    report.unexpected_keys = [name for name in checkpoint if name not in model_state and name not in optional]
    return report


def _same_shape(stored: torch.Tensor, target: torch.Tensor) -> bool:
    scalars = {tuple(stored.shape), tuple(target.shape)} == {(), (1,)}
    return stored.shape == target.shape or scalars


def load_state_dict(
    model: nn.Module,
    state_dict_or_path: Mapping[str, torch.Tensor] | str | os.PathLike[str],
    *,
    strict: bool = True,
    key_map: KeyMap | None = None,
) -> LoadReport:
    """Copy a checkpoint's tensors into ``model``, in place.

    Args:
        model: the module to load into; its ``state_dict()`` (parameters and persistent
            buffers, integer ones included) defines what is expected.
        state_dict_or_path: a flat name -> tensor mapping, or a checkpoint file for
            :func:`read_state_dict`.
        strict: if True, any missing key, unexpected key or shape mismatch raises and nothing
            is loaded. If False, every same-named, same-shaped tensor is loaded, the rest of
            the model keeps its values, and the report is logged at WARNING.
        key_map: how the checkpoint names the model's tensors, when not as ``state_dict()``
            does (mmdetection checkpoints); the report then uses the checkpoint's names.

    Returns:
        The comparison report (``report.ok`` is True when everything matched).

    Raises:
        CheckpointError: the file cannot be read (see :func:`read_state_dict`).
        CheckpointMismatchError: ``strict`` and the checkpoint does not match the model.
    """
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        source = str(state_dict_or_path)
        checkpoint = read_state_dict(state_dict_or_path)
    else:
        source = "the given state dict"
        checkpoint = dict(state_dict_or_path)
        not_tensors = [key for key, value in checkpoint.items() if not isinstance(value, torch.Tensor)]
        if not_tensors:
            raise TypeError(f"state dict values must be tensors; not for keys {not_tensors[:5]}")

    model_state = model.state_dict()
    if key_map is not None:
        # Compare in the checkpoint's names, so that the report speaks the file's language.
        model_state = {key_map.to_file[name]: tensor for name, tensor in model_state.items()}
    optional = key_map.optional if key_map is not None else frozenset()
    report = compare_state_dicts(checkpoint, model_state, source=source, optional=optional)
    if key_map is not None and report.missing_keys and not set(checkpoint) & set(model_state):
        report.hint = (
            f"no tensor of the checkpoint has a {key_map.family} name of this model: is it a checkpoint "
            f"of another family (the config says the weights are {key_map.family}'s)?"
        )
    if not report.ok:
        if strict:
            raise CheckpointMismatchError(report)
        logger.warning("%s", report.format())

    mismatched = {mismatch.name for mismatch in report.shape_mismatches}
    names = [name for name in model_state if name in checkpoint and name not in mismatched]
    with torch.no_grad():
        for name in names:
            # state_dict() tensors share storage with the parameters and buffers.
            target = model_state[name]
            target.copy_(checkpoint[name].reshape(target.shape))
    logger.info("loaded %d tensors from %s", len(names), source)
    return report


# --------------------------------------------------------------------------------------------
# Message helpers


def _reason(exc: BaseException) -> str:
    """The first sentence of an exception's message, on one line, with its type."""
    text = str(exc)
    # torch's weights_only errors bury the actual reason after a long preamble.
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    paragraphs = [paragraph for paragraph in re.split(r"\n\s*\n", text) if paragraph.strip()]
    text = " ".join(paragraphs[0].split()) if paragraphs else ""
    text = re.split(r"(?<=[a-z0-9])\. ", text, maxsplit=1)[0].rstrip(".")
    if len(text) > 200:
        text = text[:197] + "..."
    if not text and isinstance(exc, EOFError):
        text = "unexpected end of file"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _plural(count: int, noun: str) -> str:
    if count == 1:
        return f"1 {noun}"
    return f"{count} {noun}es" if noun.endswith("ch") else f"{count} {noun}s"


def _group_keys(keys: Iterable[str]) -> list[str]:
    """``a.b.weight, a.b.bias, c`` -> ``a.b.{weight, bias}, c``, in first-seen order."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        parent, _, leaf = key.rpartition(".")
        groups.setdefault(parent, []).append(leaf)
    lines = []
    for parent, leaves in groups.items():
        prefix = f"{parent}." if parent else ""
        lines.append(f"{prefix}{leaves[0]}" if len(leaves) == 1 else f"{prefix}{{{', '.join(leaves)}}}")
    return lines


def _section(title: str, lines: list[str]) -> list[str]:
    if not lines:
        return []
    shown = [f"  {line}" for line in lines[:MAX_REPORT_LINES]]
    if len(lines) > MAX_REPORT_LINES:
        shown.append(f"  ... and {len(lines) - MAX_REPORT_LINES} more")
    return [title, *shown]
