"""``model.json``: what travels with an exported network so a runtime needs nothing else.

It records the preprocessing (:class:`InputSpec`), the class names, the decoder that turns raw
outputs into detections, the input/output contract of the graph and where it came from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dyhead_serve.modeling.dense_decoder import DenseDecoder, DenseDecoderSpec
from dyhead_serve.modeling.rcnn.decoder import RCNNDecoder, RCNNDecoderSpec
from dyhead_serve.pipeline.predictor import Decoder
from dyhead_serve.pipeline.preprocess import InputSpec

__all__ = ["ARTIFACT_FORMAT", "ModelArtifact", "decoder_from_dict", "decoder_to_dict"]

ARTIFACT_FORMAT = "dyhead-serve/model@1"


def decoder_to_dict(decoder: Decoder) -> dict[str, Any]:
    """Serialise a decoder (``{"type": ..., "spec": {...}}``)."""
    if isinstance(decoder, DenseDecoder):
        return {"type": "dense", "spec": asdict(decoder.spec)}
    to_dict = getattr(decoder, "to_dict", None)
    if callable(to_dict):
        result = to_dict()
        if isinstance(result, dict):
            return result
    raise TypeError(f"{type(decoder).__name__} cannot be written to model.json")


def decoder_from_dict(data: dict[str, Any]) -> Decoder:
    """Rebuild a decoder written by :func:`decoder_to_dict`."""
    kind = data.get("type")
    if kind == "dense":
        return DenseDecoder(DenseDecoderSpec(**data["spec"]))
    if kind == "rcnn":
        return RCNNDecoder(RCNNDecoderSpec(**data["spec"]))
    raise ValueError(f"model.json names an unknown decoder type {kind!r}")


@dataclass
class ModelArtifact:
    """The contents of ``model.json``.

    Attributes:
        name: model name (zoo name or config stem).
        input_spec: preprocessing the network expects.
        class_names: name of each class index.
        decoder: serialised decoder (see :func:`decoder_to_dict`).
        inputs / outputs: the graph's tensors: name, dtype and shape (strings for dynamic axes).
        provenance: config, weights checksum, opset, exporter versions, precision, ...
    """

    name: str
    input_spec: InputSpec
    class_names: list[str]
    decoder: dict[str, Any]
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": ARTIFACT_FORMAT,
            "name": self.name,
            "input_spec": self.input_spec.to_dict(),
            "class_names": list(self.class_names),
            "decoder": self.decoder,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "provenance": self.provenance,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelArtifact:
        """Read ``model.json``; a missing, malformed or foreign file is a ValueError saying which."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no model.json (export the model with `dyhead-export onnx`)")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != ARTIFACT_FORMAT:
            raise ValueError(f"{path}: not a dyhead-serve model.json (expected format {ARTIFACT_FORMAT!r})")
        try:
            return cls(
                name=str(data["name"]),
                input_spec=InputSpec.from_dict(data["input_spec"]),
                class_names=[str(c) for c in data["class_names"]],
                decoder=dict(data["decoder"]),
                inputs=list(data.get("inputs", [])),
                outputs=list(data.get("outputs", [])),
                provenance=dict(data.get("provenance", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: incomplete model.json ({exc!r})") from exc

    def build_decoder(self) -> Decoder:
        return decoder_from_dict(self.decoder)
