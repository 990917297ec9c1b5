"""The ``"dense"`` decoder entry of ``model.json``, shared by the two dense decoders.

``{"type": "dense", "spec": {...}}`` names Detectron2's dense decoder
(:class:`~dyhead_serve.decode.detectron2_dense.Detectron2DenseDecoder`) unless ``spec.rules`` is
``"mmdet"`` (:class:`~dyhead_serve.decode.mmdet_atss.MMDetATSSDecoder`). Both read the anchor and
test fields below; files written before the two were separate classes carry every field for
either, so each decoder accepts (checks, then ignores) the other's few fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dyhead_serve.artifact_rules import (
    ArtifactError,
    Rule,
    integer,
    list_of,
    mapping,
    number,
    one_of,
    record,
)

__all__ = ["DENSE_FIELD_RULES", "DENSE_HEAD_KINDS", "DENSE_RULES", "DENSE_TYPE", "read_dense_spec"]

DENSE_TYPE = "dense"
DENSE_HEAD_KINDS = ("atss", "retinanet")
DENSE_RULES = ("detectron2", "mmdet")  # the value of spec.rules: which decoder reads the entry

_FLOAT = number(-1e6, 1e6)
_POSITIVE = number(0.0, 1e6, above_low=True)
_PROBABILITY = number(0.0, 1.0)
_LEVELS = 16  # feature levels a decoder may name

DENSE_FIELD_RULES: dict[str, Rule] = {
    "kind": one_of(*DENSE_HEAD_KINDS),
    "strides": list_of(integer(1, 1024), min_length=1, max_length=_LEVELS),
    "anchor_sizes": list_of(list_of(_POSITIVE, min_length=1, max_length=64), min_length=1),
    "anchor_aspect_ratios": list_of(list_of(_POSITIVE, min_length=1, max_length=64), min_length=1),
    "anchor_offset": _PROBABILITY,
    "box_weights": list_of(_POSITIVE, min_length=4, max_length=4),
    "score_threshold": _PROBABILITY,
    "topk_candidates": integer(1, 1_000_000),
    "nms_threshold": _PROBABILITY,
    "max_detections": integer(1, 100_000),
    "num_classes": integer(1, 100_000),
    # absent in files written before mmdetection's models: Detectron2's rules
    "rules": one_of(*DENSE_RULES),
    "box_means": list_of(_FLOAT, min_length=4, max_length=4),
    "box_stds": list_of(_POSITIVE, min_length=4, max_length=4),
    "min_box_size": number(-1.0, 1e6),
}
"""Every field a ``"dense"`` spec may hold, with its rule."""


def read_dense_spec(data: Any, path: str, rules: str, spec_class: type) -> dict[str, Any]:
    """The checked fields of a ``"dense"`` entry that ``spec_class`` keeps.

    Args:
        data: ``{"type": "dense", "spec": {...}}``.
        path: where ``data`` sits in model.json, for messages (``"decoder"``).
        rules: the ``spec.rules`` the reading decoder implements (absent means ``"detectron2"``).
        spec_class: the reading decoder's spec dataclass: its fields without a default, and
            ``kind``, are required.

    Raises:
        ArtifactError: naming the field that is missing, unknown, out of range, or disagrees.
    """
    entry = record({"type": one_of(DENSE_TYPE), "spec": mapping}, ("type", "spec"))(data, path)
    spec_fields = dataclasses.fields(spec_class)
    required = ["kind"] + [
        f.name
        for f in spec_fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name != "kind"
    ]
    checked = record(DENSE_FIELD_RULES, required)(entry["spec"], f"{path}.spec")
    found = checked.get("rules", "detectron2")
    if found != rules:
        raise ArtifactError(f"{path}.spec.rules: {found!r}, but this decoder implements the {rules!r} rules")
    levels = len(checked["strides"])
    for key in ("anchor_sizes", "anchor_aspect_ratios"):
        if len(checked[key]) not in (1, levels):  # one entry is shared by every level
            raise ArtifactError(
                f"{path}.spec.{key}: {len(checked[key])} levels, but {path}.spec.strides has {levels}"
            )
    kept = {f.name for f in spec_fields}
    return {name: value for name, value in checked.items() if name in kept}
