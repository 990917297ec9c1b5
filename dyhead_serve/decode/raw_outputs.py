"""Raw outputs, the named tensors every backend returns, and the check that they have the shapes
the decoder spec describes.

Every backend (torch, ONNX Runtime, TensorRT) returns the same names: ``logits``, ``deltas`` and,
for ATSS, ``centerness`` for dense detectors; ``proposals``, ``num_proposals``, ``logits`` and
``deltas`` for Faster R-CNN (see each decoder's docstring for the shapes).

A decoder spec travels in ``model.json`` beside the graph; one edited or copied from another
model (another number of classes, other strides) would otherwise decode into wrong labels
without any error. Decoders call :func:`check_output_dim` on every batch (a few comparisons).
"""

from __future__ import annotations

from torch import Tensor

from dyhead_serve.errors import UserError

__all__ = ["OutputShapeError", "RawOutputs", "check_output_dim"]

RawOutputs = dict[str, Tensor]
"""A network's outputs by name, as every backend returns them."""


class OutputShapeError(UserError, ValueError):
    """The network's outputs do not have the shapes the decoder spec (model.json) describes."""


def check_output_dim(outputs: RawOutputs, name: str, dim: int, expected: int, meaning: str) -> None:
    """Raise :class:`OutputShapeError` unless ``outputs[name].shape[dim] == expected``.

    Args:
        meaning: what the size counts, for the message (``"class scores"``, ``"anchors"``, ...).
    """
    if name not in outputs:
        raise OutputShapeError(f"the network returned no {name!r} output (it returned {sorted(outputs)})")
    actual = outputs[name].shape[dim]
    if actual != expected:
        raise OutputShapeError(
            f"the network's {name!r} output has {actual} {meaning}, but the decoder spec declares "
            f"{expected}: the model.json does not belong to this network (or the input is not padded "
            "to the input spec's size divisibility)"
        )
