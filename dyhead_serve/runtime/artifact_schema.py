"""What a ``model.json`` may hold, checked field by field when it is loaded.

A model folder can come from anywhere, so nothing in its ``model.json`` is trusted: every field
has a rule (type, range, length; :mod:`dyhead_serve.artifact_rules`), unknown and missing fields
are refused, and the fields that must agree (classes and class names, the decoder and the graph's
outputs) are compared. A failure is an :class:`~dyhead_serve.artifact_rules.ArtifactError` that
names the field (``model.json: decoder.spec.strides[0]: ...``), which the command-line tools turn
into ``error: ...`` and exit status 2.

Each part is read by the class it describes, with the rules kept beside it: ``input_spec`` by
:meth:`InputSpec.from_dict <dyhead_serve.pipeline.preprocess.InputSpec.from_dict>` (rules:
``INPUT_SPEC_RULES``), ``decoder`` by :func:`~dyhead_serve.decode.from_dict.decoder_from_dict`
(each decoder's ``from_dict``). To add a field, add its rule there (tests/runtime/
test_artifact_schema.py checks that every spec field has one); this module holds the top level.
"""

from __future__ import annotations

from typing import Any

from dyhead_serve.artifact_rules import ArtifactError, Rule, integer, list_of, mapping, one_of, record, text
from dyhead_serve.decode.base import Decoder
from dyhead_serve.decode.from_dict import decoder_from_dict
from dyhead_serve.pipeline.preprocess import InputSpec
from dyhead_serve.runtime.options import PRECISIONS

__all__ = ["ARTIFACT_RULES", "check_artifact"]

_TENSOR = record(
    {
        "name": text(),
        "dtype": text(32),
        "shape": list_of(lambda v, p: v if isinstance(v, str) else integer(0, 2**31)(v, p), max_length=8),
    },
    required=("name", "dtype", "shape"),
)


ARTIFACT_RULES: dict[str, Rule] = {
    "format": text(),
    "name": text(),
    "input_spec": InputSpec.from_dict,  # -> InputSpec
    "class_names": list_of(text(), min_length=1),
    "decoder": decoder_from_dict,  # -> a Decoder
    "inputs": list_of(_TENSOR, max_length=16),
    "outputs": list_of(_TENSOR, max_length=16),
    "provenance": mapping,
}
_REQUIRED = ("format", "name", "input_spec", "class_names", "decoder")


def _check_agreement(artifact: dict[str, Any]) -> None:
    provenance = artifact.get("provenance", {})
    if "precision" in provenance:
        one_of(*PRECISIONS)(provenance["precision"], "provenance.precision")
    decoder: Decoder = artifact["decoder"]
    names = artifact["class_names"]
    if decoder.num_classes != len(names):
        raise ArtifactError(
            f"decoder.spec.num_classes: {decoder.num_classes} classes, but class_names has {len(names)}"
        )
    outputs = {tensor["name"]: tensor["shape"] for tensor in artifact.get("outputs", [])}
    if not outputs:  # older files may not record the graph's outputs
        return
    for name, last_dims in decoder.graph_outputs().items():
        if name not in outputs:
            raise ArtifactError(f"outputs: the decoder reads {name!r}, which the graph does not output")
        shape = outputs[name]
        if last_dims is not None and shape and isinstance(shape[-1], int) and shape[-1] not in last_dims:
            raise ArtifactError(
                f"outputs.{name}: last dimension {shape[-1]}, the decoder expects "
                + " or ".join(str(d) for d in last_dims)
            )


def check_artifact(data: Any) -> dict[str, Any]:
    """The checked contents of a ``model.json`` document (already parsed from JSON):
    ``input_spec`` as an :class:`InputSpec`, ``decoder`` as a :class:`Decoder`, the other
    fields as JSON values.

    Raises:
        ArtifactError: naming the first field that is missing, unknown, of the wrong type or out
            of range, or the fields that disagree.
    """
    if not isinstance(data, dict):
        shown = repr(data)
        raise ArtifactError(
            f"model.json: expected a JSON object, got {shown[:80]}{'...' if len(shown) > 80 else ''}"
        )
    checked: dict[str, Any] = record(ARTIFACT_RULES, _REQUIRED)(data, "")
    _check_agreement(checked)
    return checked
