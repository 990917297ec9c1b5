"""Compare a checkpoint's tensors with a model's and load them, with a report of what differs.

:func:`load_state_dict` compares the tensors with ``model.state_dict()`` (parameters and
persistent buffers, integer buffers such as Swin's ``relative_position_index`` included) and
either loads them or raises :class:`~dyhead_serve.checkpoint.report.CheckpointMismatchError`
carrying a :class:`~dyhead_serve.checkpoint.report.LoadReport`. A checkpoint family that names
tensors otherwise (mmdetection) is loaded through a :class:`KeyMap`, and its report speaks the
file's names.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from dyhead_serve.checkpoint.read import read_state_dict
from dyhead_serve.checkpoint.report import CheckpointMismatchError, LoadReport, ShapeMismatch

__all__ = ["KeyMap", "compare_state_dicts", "load_state_dict"]

# One logger for the package's reading and loading messages.
logger = logging.getLogger("dyhead_serve.checkpoint")


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
