"""Which model a command line names: a zoo name, an exported folder, or a config with weights.

Every command that loads a model (``dyhead-serve predict|eval|serve``, ``dyhead-export
onnx|tensorrt|engine``, the server's settings) resolves its ``--model``/``--config``/
``--weights``/overrides here, so the rules and the provenance written into exported
``model.json`` files are the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dyhead_serve import zoo
from dyhead_serve.checkpoint import sha256_of
from dyhead_serve.errors import UserError

__all__ = ["ModelSource", "ModelSourceError", "resolve_model"]


class ModelSourceError(UserError, ValueError):
    """The model arguments do not name a model (the message says what to change)."""


@dataclass(frozen=True)
class ModelSource:
    """A resolved model name.

    Attributes:
        kind: ``"zoo"`` (a named model; its weights are downloaded when not cached),
            ``"config"`` (a config file or shipped config name with a checkpoint) or
            ``"exported"`` (a folder written by ``dyhead-export``).
        name: the model's name (zoo name, config stem, or folder name).
        config: the config file (package path of a zoo model, or as given); None for a folder.
        weights: the checkpoint; None for a folder (and for a zoo model resolved without
            downloading).
        folder: the exported folder; None otherwise.
        overrides: ``KEY VALUE`` config overrides, flattened.
        entry: the zoo entry of a zoo model.
        weights_given: whether ``weights`` was named by the user (not the zoo's own file).
    """

    kind: Literal["zoo", "config", "exported"]
    name: str
    config: str | Path | None = None
    weights: Path | None = None
    folder: Path | None = None
    overrides: tuple[str, ...] = ()
    entry: zoo.ZooModel | None = None
    weights_given: bool = False

    @property
    def class_names(self) -> list[str] | None:
        """Class names a zoo entry declares (None: the config's dataset decides)."""
        if self.entry is not None and self.entry.class_names is not None:
            return list(self.entry.class_names)
        return None

    @property
    def embedded(self) -> bool:
        """Whether this is a model shipped inside the package, used as shipped."""
        return self.entry is not None and self.entry.embedded is not None and not self.weights_given

    def provenance(self) -> dict[str, Any]:
        """Where the model came from, for ``model.json``: a zoo model is named (``zoo:NAME``),
        not located, since its files move with the installation; files are located and hashed."""
        if self.kind == "exported":
            raise ModelSourceError(f"{self.folder} is already exported")
        if self.weights is None:
            raise ModelSourceError(f"{self.name}: its weights were not resolved")
        zoo_name = f"zoo:{self.entry.name}" if self.entry is not None else None
        record: dict[str, Any] = {
            "config": zoo_name or str(self.config),
            "weights": str(self.weights) if self.weights_given or zoo_name is None else zoo_name,
            "weights_sha256": sha256_of(self.weights),
        }
        if self.overrides:
            record["overrides"] = list(self.overrides)
        return record


def resolve_model(
    model: str | Path | None = None,
    *,
    config: str | Path | None = None,
    weights: str | Path | None = None,
    overrides: Sequence[str] = (),
    exported_ok: bool = True,
    default_ok: bool = True,
    download: bool = True,
) -> ModelSource:
    """Resolve the model arguments of a command.

    Args:
        model: a zoo name or (when ``exported_ok``) a folder written by ``dyhead-export``;
            None: the embedded default model (when ``default_ok``).
        config, weights: a Detectron2 DyHead config (file or shipped name) and its checkpoint;
            exclusive with ``model``. With a zoo name, ``weights`` replaces its download.
        overrides: ``KEY VALUE`` config overrides, flattened (not for an exported folder).

    A zoo model's weights are downloaded (with a progress bar) when they are not cached; with
    ``download=False`` only the arguments are checked and a zoo model's ``weights`` stays None
    unless named.

    Raises:
        ModelSourceError: the arguments do not name one model.
        zoo.ZooError: unknown zoo name, or the download failed.
    """
    overrides = tuple(str(item) for item in overrides)
    if len(overrides) % 2:
        raise ModelSourceError(f"config overrides come in KEY VALUE pairs, got {list(overrides)}")
    if config is not None:
        if model is not None:
            raise ModelSourceError("name the model either with --model or with --config/--weights, not both")
        if weights is None:
            raise ModelSourceError("--config needs --weights (the checkpoint to load)")
        return ModelSource(
            "config", Path(str(config)).stem, config, Path(weights), overrides=overrides, weights_given=True
        )
    if model is None:
        if not default_ok:
            raise ModelSourceError("name a model with --model or with --config and --weights")
        model = zoo.DEFAULT_MODEL
    if Path(model).is_dir():
        folder = Path(model)
        if not exported_ok:
            raise ModelSourceError(
                f"{folder} is a folder; this command needs a zoo name or --config/--weights"
            )
        if overrides:
            raise ModelSourceError(f"{folder} is an exported network: config overrides no longer apply")
        if weights is not None:
            raise ModelSourceError(f"{folder} is an exported network: --weights does not apply to it")
        return ModelSource("exported", folder.resolve().name, folder=folder)
    entry = zoo.get_model(str(model))
    if weights is not None:
        weights_file: Path | None = Path(weights)
    else:
        weights_file = zoo.weights_path(entry) if download else None
    return ModelSource(
        "zoo",
        entry.name,
        entry.config_path,
        weights_file,
        overrides=overrides,
        entry=entry,
        weights_given=weights is not None,
    )
