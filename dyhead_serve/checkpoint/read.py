"""Read official checkpoints into a flat name -> tensor dict, without executing pickled code.

Files are named ``.pth``, ``.pt`` or ``.pkl``, but the name does not say how they are written
(the official Swin-T backbone ``swin_tiny_patch4_window7_224_d2.pth`` is a plain pickle), so the
format is read from the first bytes (:func:`checkpoint_format`):

- :func:`torch.save` files, a zip archive (it starts with ``PK``) or the legacy format (a pickle
  that starts with torch's magic number): read with ``torch.load(..., weights_only=True)``. The file
  holds either a bare state dict, Detectron2's ``DetectionCheckpointer`` dict, whose ``model``
  entry is the state dict (its ``optimizer``, ``scheduler``, ``iteration`` and ``trainer``
  entries are ignored), or an mmdetection / mmengine checkpoint, whose ``state_dict`` entry is
  (``meta`` and the rest are ignored). Files that ``weights_only`` refuses are read once more by
  our own allowlists (:mod:`dyhead_serve.checkpoint.unpickler`; numpy arrays and scalars, as for
  plain pickles); the training state that mmengine pickles beside the weights (message-hub
  buffers) becomes inert placeholders, never imported or called.
- safetensors files (a JSON header and raw bytes; the embedded default model is one): read by
  :mod:`dyhead_serve.checkpoint.safetensors_file`, which checks every field of the header first.
- plain pickles, such as Detectron2 model-zoo ``.pkl`` files (often written by Python 2 from
  Caffe2): a dict, optionally with a ``model`` entry, of numpy arrays (or tensors). They are read
  with a restricted unpickler that can rebuild arrays, tensors and plain containers and nothing
  else.

A pickle names the functions it calls to rebuild its objects; a file that names any function
outside those allowlists is refused with :class:`CheckpointError` before anything is called.
"""

from __future__ import annotations

import enum
import logging
import os
import pickle
import pickletools
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from dyhead_serve.checkpoint.pickle_budget import budget_of, check_zip_entries, probe_file
from dyhead_serve.checkpoint.report import CheckpointError
from dyhead_serve.checkpoint.safetensors_file import SafetensorsError, is_safetensors, read_safetensors
from dyhead_serve.checkpoint.unpickler import REFUSAL, AllowlistedPickleModule, RestrictedUnpickler

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "CheckpointFormat",
    "checkpoint_format",
    "read_state_dict",
    "refuse_non_finite",
]

# One logger for the package's reading and loading messages.
logger = logging.getLogger("dyhead_serve.checkpoint")

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".pkl", ".safetensors")
_ZIP_MAGIC = b"PK\x03\x04"
# The first object a legacy (non-zip) torch.save file pickles (torch.serialization.MAGIC_NUMBER).
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_DDP_PREFIX = "module."


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
            no tensors, holds a NaN or infinite value in a floating tensor, or names a Python
            global outside the allowlists.
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
            # a SafetensorsError's message starts with the path already
            why = str(exc) if isinstance(exc, SafetensorsError) else f"{path}: {exc}"
            raise CheckpointError(f"checkpoint {why}") from exc
    else:
        contents = _torch_load(path) if kind is CheckpointFormat.TORCH else _pickle_load(path)
    tensors = _extract_tensors(contents, path)
    refuse_non_finite(tensors, f"checkpoint {path}")
    state_dict = _strip_ddp_prefix(tensors, path)
    logger.debug("read %d tensors from %s", len(state_dict), path)
    return state_dict


def _torch_load(path: Path) -> Any:
    _check_budget(path, legacy=not zipfile.is_zipfile(path))
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
        raise CheckpointError(f"checkpoint {path}: refusing global {refused}: {REFUSAL}") from cause
    module = AllowlistedPickleModule(path)
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


def _check_budget(path: Path, legacy: bool) -> None:
    """Refuse a file whose pickles or zip entries would build far more than the file holds
    (:mod:`~dyhead_serve.checkpoint.pickle_budget`), before anything is read for real."""
    if not legacy:
        check_zip_entries(path)
        return
    try:
        with path.open("rb") as file:
            # a legacy torch.save file: magic number, protocol, system info, then the objects
            probe_file(file, path, budget_of(path), count=4)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read ({_reason(exc)})") from exc


def _pickle_load(path: Path) -> Any:
    try:
        with path.open("rb") as file:
            probe_file(file, path, budget_of(path))
            file.seek(0)
            return RestrictedUnpickler(file, path).load()
    except CheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read ({_reason(exc)})") from exc
    except Exception as exc:  # the unpickler and numpy raise many types on malformed data
        raise CheckpointError(f"checkpoint {path}: corrupt or not a pickle ({_reason(exc)})") from exc


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


def refuse_non_finite(tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse weights that hold NaN or an infinity, naming the first such tensor.

    Such weights never give a useful detection, and some kernels do worse than propagate them:
    torchvision's CPU ``deform_conv2d`` reads memory at NaN offsets and crashes the process.

    Raises:
        CheckpointError: a floating or complex tensor holds a value that is not finite.
    """
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor) or not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        try:
            finite = torch.isfinite(tensor)
        except RuntimeError:  # dtypes without the kernel (float8_e4m3fn): look at them in float32
            finite = torch.isfinite(tensor.float())
        if bool(finite.all()):
            continue
        bad = int((~finite).sum())
        raise CheckpointError(
            f"{source}: tensor {name!r} holds {bad} NaN or infinite value{'s' if bad != 1 else ''} "
            f"(of {tensor.numel()}); the weights are broken (a diverged training run?), refusing them"
        )


def _strip_ddp_prefix(state_dict: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    if not all(key.startswith(_DDP_PREFIX) for key in state_dict):
        return state_dict
    logger.info("%s: stripping the %r prefix of a DistributedDataParallel checkpoint", path, _DDP_PREFIX)
    return {key[len(_DDP_PREFIX) :]: tensor for key, tensor in state_dict.items()}


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
