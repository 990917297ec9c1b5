"""``model.json``: what travels with an exported network so a runtime needs nothing else.

It records the preprocessing (:class:`InputSpec`), the class names, the decoder that turns raw
outputs into detections, the input/output contract of the graph and where it came from. Loading
checks every field (:mod:`dyhead_serve.runtime.artifact_schema`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dyhead_serve.artifact_rules import ArtifactError
from dyhead_serve.config.errors import ConfigError
from dyhead_serve.config.file_limits import read_config_text
from dyhead_serve.decode.base import Decoder
from dyhead_serve.decode.from_dict import decoder_from_dict
from dyhead_serve.pipeline.preprocess import InputSpec
from dyhead_serve.runtime.artifact_schema import check_artifact

__all__ = ["ARTIFACT_FORMAT", "ModelArtifact"]

ARTIFACT_FORMAT = "dyhead-serve/model@1"
# A model.json is a few kilobytes (tens with a thousand class names).
MAX_ARTIFACT_BYTES = 4 << 20


@dataclass
class ModelArtifact:
    """The contents of ``model.json``.

    Attributes:
        name: model name (zoo name or config stem).
        input_spec: preprocessing the network expects.
        class_names: name of each class index.
        decoder: the decoder's ``to_dict()`` (read back by
            :func:`~dyhead_serve.decode.from_dict.decoder_from_dict`).
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
        """Read and check ``model.json``.

        Raises:
            FileNotFoundError: no such file.
            ArtifactError (a ValueError): unreadable, not JSON, not a dyhead-serve model.json, or a
                field missing, unknown, of the wrong type or out of range; the message names it.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no model.json (export the model with `dyhead-export onnx`)")
        try:
            data = json.loads(read_config_text(path, what="model.json", max_bytes=MAX_ARTIFACT_BYTES))
        except ConfigError as exc:
            raise ArtifactError(str(exc)) from None
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
        except RecursionError:
            raise ArtifactError(f"{path}: not a model.json (nested too deeply)") from None
        if not isinstance(data, dict) or data.get("format") != ARTIFACT_FORMAT:
            raise ArtifactError(
                f"{path}: not a dyhead-serve model.json (expected format {ARTIFACT_FORMAT!r})"
            )
        try:
            checked = check_artifact(data)
        except ArtifactError as exc:
            raise ArtifactError(f"{path}: {exc}") from None
        return cls(
            name=checked["name"],
            input_spec=checked["input_spec"],
            class_names=checked["class_names"],
            decoder=checked["decoder"].to_dict(),
            inputs=checked.get("inputs", []),
            outputs=checked.get("outputs", []),
            provenance=checked.get("provenance", {}),
        )

    @property
    def precision(self) -> str:
        """``"fp32"`` or ``"fp16"`` (``provenance.precision``; fp32 for files that predate it)."""
        return str(self.provenance.get("precision", "fp32"))

    def build_decoder(self) -> Decoder:
        return decoder_from_dict(self.decoder)
