"""The one place a ``model.json`` decoder entry is turned back into a decoder.

``{"type": "dense", "spec": {...}}`` is Detectron2's dense decoder, or mmdetection's ATSS decoder
when ``spec.rules`` is ``"mmdet"``; ``{"type": "rcnn", "spec": {...}}`` is Detectron2's Faster
R-CNN decoder. Each decoder writes its entry with ``to_dict`` and reads (and checks) it with its
``from_dict``; this module only picks the class.
"""

from __future__ import annotations

from typing import Any

from dyhead_serve.artifact_rules import ArtifactError, mapping, one_of
from dyhead_serve.decode.base import Decoder
from dyhead_serve.decode.dense_format import DENSE_TYPE
from dyhead_serve.decode.detectron2_dense import Detectron2DenseDecoder
from dyhead_serve.decode.mmdet_atss import MMDetATSSDecoder
from dyhead_serve.decode.rcnn import RCNN_TYPE, RCNNDecoder

__all__ = ["DECODER_TYPES", "DENSE_DECODERS", "decoder_from_dict"]

DENSE_DECODERS: dict[str, type[Detectron2DenseDecoder] | type[MMDetATSSDecoder]] = {
    "detectron2": Detectron2DenseDecoder,
    "mmdet": MMDetATSSDecoder,
}
"""The decoder of a ``"dense"`` entry by its ``spec.rules`` (absent: ``"detectron2"``)."""

DECODER_TYPES = (DENSE_TYPE, RCNN_TYPE)


def decoder_from_dict(data: Any, path: str = "decoder") -> Decoder:
    """The decoder a ``model.json`` entry describes (what its ``to_dict`` wrote).

    Args:
        data: ``{"type": ..., "spec": {...}}``.
        path: where ``data`` sits in the document, for messages.

    Raises:
        ArtifactError (a ValueError): an unknown decoder type or rules, or a spec field missing,
            unknown or out of range; the message names the field.
    """
    kind = mapping(data, path).get("type")
    if kind not in DECODER_TYPES or not isinstance(kind, str):
        shown = repr(kind)[:80]
        raise ArtifactError(
            f"{path}.type: expected one of {', '.join(map(repr, DECODER_TYPES))}, got {shown} "
            "(an unknown decoder; was the model exported by a newer dyhead-serve?)"
        )
    if kind == RCNN_TYPE:
        return RCNNDecoder.from_dict(data, path)
    spec = data.get("spec")
    rules = spec.get("rules", "detectron2") if isinstance(spec, dict) else "detectron2"
    rules = one_of(*DENSE_DECODERS)(rules, f"{path}.spec.rules")  # the spec itself: checked by the class
    return DENSE_DECODERS[rules].from_dict(data, path)
