"""The check that a network's raw outputs have the shapes its decoder spec describes.

A decoder spec travels in ``model.json`` beside the graph; one edited or copied from another
model (another number of classes, other strides) would otherwise decode into wrong labels
without any error. Decoders call :func:`check_output_dim` on every batch (a few comparisons).
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["OutputShapeError", "check_output_dim"]


class OutputShapeError(ValueError):
    """The network's outputs do not have the shapes the decoder spec (model.json) describes."""


def check_output_dim(outputs: dict[str, Tensor], name: str, dim: int, expected: int, meaning: str) -> None:
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
