"""What a ``model.json`` may hold, checked field by field when it is loaded.

A model folder can come from anywhere, so nothing in its ``model.json`` is trusted: every field
has a rule (type, range, length) in the tables below, unknown and missing fields are refused,
and the fields that must agree (anchor levels and strides, classes and class names, the decoder
and the graph's outputs) are compared. A failure is an :class:`ArtifactError` that names the field
(``model.json: decoder.spec.strides[0]: ...``), which the command-line tools turn into
``error: ...`` and exit status 2.

To add a field to :class:`~dyhead_serve.pipeline.preprocess.InputSpec` or to a decoder spec, add
its rule to ``INPUT_SPEC_RULES`` or to the decoder's entry of ``DECODER_KINDS``; to add a decoder,
add an entry there (tests/runtime/test_artifact_schema.py checks that every dataclass field has a
rule).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dyhead_serve.decode.detectron2_dense import (
    DECODER_RULES,
    DENSE_DECODER_KINDS,
    DenseDecoder,
    DenseDecoderSpec,
)
from dyhead_serve.decode.rcnn import RCNNDecoder, RCNNDecoderSpec
from dyhead_serve.pipeline.predictor import Decoder
from dyhead_serve.pipeline.preprocess import RESIZE_BACKENDS, RESIZE_RULES, InputSpec

__all__ = [
    "DECODER_KINDS",
    "INPUT_SPEC_RULES",
    "MAX_IMAGE_SIDE",
    "ArtifactError",
    "DecoderKind",
    "Rule",
    "check_artifact",
    "input_spec_from",
]

# Largest min_size / max_size (pixels): 4096 is three times Detectron2's 1333 and more than any
# multi-scale test setting; 100000 made one image need 20 GB.
MAX_IMAGE_SIDE = 4096


class ArtifactError(ValueError):
    """A ``model.json`` that cannot be used; the message names the field and what is wrong."""


Rule = Callable[[Any, str], Any]
"""Checks a value found at a field path and returns it normalised; raises :class:`ArtifactError`."""


def _fail(path: str, expected: str, value: Any) -> ArtifactError:
    shown = repr(value)
    return ArtifactError(f"{path}: expected {expected}, got {shown[:80]}{'...' if len(shown) > 80 else ''}")


def integer(low: int, high: int) -> Rule:
    """An integer (not a boolean) in [low, high]."""

    def check(value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _fail(path, f"an integer in [{low}, {high}]", value)
        return value

    return check


def number(low: float, high: float, *, above_low: bool = False) -> Rule:
    """A finite number (not a boolean) in [low, high], or (low, high] with ``above_low``."""

    def check(value: Any, path: str) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value > high or value < low or (above_low and value == low):
            raise _fail(path, f"a finite number in {'(' if above_low else '['}{low}, {high}]", value)
        return float(value)

    return check


def one_of(*choices: str) -> Rule:
    def check(value: Any, path: str) -> str:
        if value not in choices or not isinstance(value, str):
            raise _fail(path, "one of " + ", ".join(repr(c) for c in choices), value)
        return value

    return check


def text(max_length: int = 256) -> Rule:
    """A non-empty string of at most ``max_length`` characters."""

    def check(value: Any, path: str) -> str:
        if not isinstance(value, str) or not 0 < len(value) <= max_length:
            raise _fail(path, f"a non-empty string of at most {max_length} characters", value)
        return value

    return check


def boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, "true or false", value)
    return value


def list_of(item: Rule, *, min_length: int = 0, max_length: int = 100_000) -> Rule:
    """A JSON list of ``min_length`` to ``max_length`` items, each checked by ``item``."""

    def check(value: Any, path: str) -> list[Any]:
        if not isinstance(value, list) or not min_length <= len(value) <= max_length:
            size = f"{min_length}" if min_length == max_length else f"{min_length} to {max_length}"
            raise _fail(path, f"a list of {size} items", value)
        return [item(v, f"{path}[{i}]") for i, v in enumerate(value)]

    return check


def mapping(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(path, "an object", value)
    return value


def record(rules: dict[str, Rule], required: Sequence[str]) -> Rule:
    """An object with exactly these fields (those in ``required`` must be present)."""

    def check(value: Any, path: str) -> dict[str, Any]:
        fields = mapping(value, path)
        unknown = sorted(set(fields) - set(rules))
        if unknown:
            raise ArtifactError(
                f"{path or 'the top level'}: unknown field {unknown[0]!r} (this version knows "
                f"{', '.join(rules)}); was the model exported by a newer dyhead-serve?"
            )
        for name in required:
            if name not in fields:
                raise ArtifactError(f"{_join(path, name)}: missing")
        return {name: rules[name](fields[name], _join(path, name)) for name in fields}

    return check


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def dataclass_record(spec_class: type, rules: dict[str, Rule]) -> Rule:
    """:func:`record` of a spec dataclass: fields without a default are required."""
    required = [
        f.name
        for f in dataclasses.fields(spec_class)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    return record(rules, required)


_FLOAT = number(-1e6, 1e6)
_POSITIVE = number(0.0, 1e6, above_low=True)
_PROBABILITY = number(0.0, 1.0)
_LEVELS = 16  # feature levels a decoder may name

INPUT_SPEC_RULES: dict[str, Rule] = {
    "channel_order": one_of("BGR", "RGB"),
    "pixel_mean": list_of(number(-1e4, 1e4), min_length=3, max_length=3),
    "pixel_std": list_of(number(0.0, 1e4, above_low=True), min_length=3, max_length=3),
    "min_size": integer(1, MAX_IMAGE_SIDE),
    "max_size": integer(1, MAX_IMAGE_SIDE),
    "size_divisibility": integer(1, 1024),  # TensorRT profiles and the backends divide by it
    # absent in files written before mmdetection's models: Detectron2's resize with Pillow
    "resize_rule": one_of(*RESIZE_RULES),
    "resize_backend": one_of(*RESIZE_BACKENDS),
}

_BOX_WEIGHTS = list_of(_POSITIVE, min_length=4, max_length=4)


@dataclass(frozen=True)
class DecoderKind:
    """One ``decoder.type`` of model.json.

    Attributes:
        spec: the spec dataclass ``decoder.spec`` is read into.
        build: the decoder for a spec.
        rules: one rule per field of ``spec``.
        outputs: the graph outputs the decoder reads, given the checked spec, each with the size
            its last dimension must have when the export recorded a fixed one (None: any).
    """

    spec: type
    build: Callable[[Any], Decoder]
    rules: dict[str, Rule]
    outputs: Callable[[dict[str, Any]], dict[str, Sequence[int] | None]]

    def check_spec(self, value: Any, path: str) -> dict[str, Any]:
        checked: dict[str, Any] = dataclass_record(self.spec, self.rules)(value, path)
        return checked


def _dense_outputs(spec: dict[str, Any]) -> dict[str, Sequence[int] | None]:
    outputs: dict[str, Sequence[int] | None] = {"logits": [spec["num_classes"]], "deltas": [4]}
    if spec["kind"] == "atss":
        outputs["centerness"] = None
    return outputs


def _rcnn_outputs(spec: dict[str, Any]) -> dict[str, Sequence[int] | None]:
    classes = spec["num_classes"]
    return {
        "proposals": [4],
        "num_proposals": None,
        "logits": [classes + 1],
        "deltas": [4, 4 * classes],  # class-agnostic or per-class regression
    }


DECODER_KINDS: dict[str, DecoderKind] = {
    "dense": DecoderKind(
        spec=DenseDecoderSpec,
        build=DenseDecoder,
        rules={
            "kind": one_of(*DENSE_DECODER_KINDS),
            "strides": list_of(integer(1, 1024), min_length=1, max_length=_LEVELS),
            "anchor_sizes": list_of(list_of(_POSITIVE, min_length=1, max_length=64), min_length=1),
            "anchor_aspect_ratios": list_of(list_of(_POSITIVE, min_length=1, max_length=64), min_length=1),
            "anchor_offset": _PROBABILITY,
            "box_weights": _BOX_WEIGHTS,
            "score_threshold": _PROBABILITY,
            "topk_candidates": integer(1, 1_000_000),
            "nms_threshold": _PROBABILITY,
            "max_detections": integer(1, 100_000),
            "num_classes": integer(1, 100_000),
            # absent in files written before mmdetection's models: Detectron2's rules
            "rules": one_of(*DECODER_RULES),
            "box_means": list_of(_FLOAT, min_length=4, max_length=4),
            "box_stds": list_of(_POSITIVE, min_length=4, max_length=4),
            "min_box_size": number(-1.0, 1e6),
        },
        outputs=_dense_outputs,
    ),
    "rcnn": DecoderKind(
        spec=RCNNDecoderSpec,
        build=RCNNDecoder,
        rules={
            "box_weights": _BOX_WEIGHTS,
            "score_threshold": _PROBABILITY,
            "nms_threshold": _PROBABILITY,
            "max_detections": integer(-1, 100_000),  # negative: all (Detectron2's convention)
            "num_classes": integer(1, 100_000),
            "sigmoid_scores": boolean,
        },
        outputs=_rcnn_outputs,
    ),
}

_TENSOR = record(
    {
        "name": text(),
        "dtype": text(32),
        "shape": list_of(lambda v, p: v if isinstance(v, str) else integer(0, 2**31)(v, p), max_length=8),
    },
    required=("name", "dtype", "shape"),
)


def _decoder(value: Any, path: str) -> dict[str, Any]:
    fields = record({"type": one_of(*DECODER_KINDS), "spec": mapping}, required=("type", "spec"))(value, path)
    kind = DECODER_KINDS[fields["type"]]
    return {"type": fields["type"], "spec": kind.check_spec(fields["spec"], f"{path}.spec")}


ARTIFACT_RULES: dict[str, Rule] = {
    "format": text(),
    "name": text(),
    "input_spec": dataclass_record(InputSpec, INPUT_SPEC_RULES),
    "class_names": list_of(text(), min_length=1),
    "decoder": _decoder,
    "inputs": list_of(_TENSOR, max_length=16),
    "outputs": list_of(_TENSOR, max_length=16),
    "provenance": mapping,
}
_REQUIRED = ("format", "name", "input_spec", "class_names", "decoder")


def _check_agreement(artifact: dict[str, Any]) -> None:
    spec = artifact["input_spec"]
    if spec["min_size"] > spec["max_size"]:
        raise ArtifactError(
            f"input_spec.min_size: {spec['min_size']} is larger than input_spec.max_size {spec['max_size']}"
        )
    decoder = artifact["decoder"]["spec"]
    if decoder.get("rules", "detectron2") == "mmdet" and decoder.get("kind") != "atss":
        raise ArtifactError(
            f"decoder.spec.rules: the mmdet rules decode ATSS heads only, not {decoder.get('kind')!r}"
        )
    names = artifact["class_names"]
    if decoder["num_classes"] != len(names):
        raise ArtifactError(
            f"decoder.spec.num_classes: {decoder['num_classes']} classes, but class_names has {len(names)}"
        )
    if "strides" in decoder:
        levels = len(decoder["strides"])
        for key in ("anchor_sizes", "anchor_aspect_ratios"):
            if len(decoder[key]) not in (1, levels):  # one entry is shared by every level
                raise ArtifactError(
                    f"decoder.spec.{key}: {len(decoder[key])} levels, but decoder.spec.strides has {levels}"
                )
    outputs = {tensor["name"]: tensor["shape"] for tensor in artifact.get("outputs", [])}
    if not outputs:  # older files may not record the graph's outputs
        return
    needed = DECODER_KINDS[artifact["decoder"]["type"]].outputs(decoder)
    for name, last_dims in needed.items():
        if name not in outputs:
            raise ArtifactError(f"outputs: the decoder reads {name!r}, which the graph does not output")
        shape = outputs[name]
        if last_dims is not None and shape and isinstance(shape[-1], int) and shape[-1] not in last_dims:
            raise ArtifactError(
                f"outputs.{name}: last dimension {shape[-1]}, the decoder expects "
                + " or ".join(str(d) for d in last_dims)
            )


def check_artifact(data: Any) -> dict[str, Any]:
    """The checked contents of a ``model.json`` document (already parsed from JSON).

    Raises:
        ArtifactError: naming the first field that is missing, unknown, of the wrong type or out
            of range, or the fields that disagree.
    """
    if not isinstance(data, dict):
        raise _fail("model.json", "a JSON object", data)
    checked: dict[str, Any] = record(ARTIFACT_RULES, _REQUIRED)(data, "")
    _check_agreement(checked)
    return checked


def input_spec_from(checked: dict[str, Any]) -> InputSpec:
    """The :class:`InputSpec` of a checked ``input_spec`` object."""
    values = dict(checked)
    values["pixel_mean"] = tuple(values["pixel_mean"])
    values["pixel_std"] = tuple(values["pixel_std"])
    return InputSpec(**values)
