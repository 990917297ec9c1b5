"""The official DyHead config files shipped with the package, by name."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

from dyhead_serve.config.errors import ConfigError

__all__ = ["OFFICIAL_CONFIGS", "official_config_path", "shipped_config_file"]

OFFICIAL_CONFIGS: tuple[str, ...] = (
    "dyhead_r50_atss_fpn_1x",
    "dyhead_r50_retina_fpn_1x",
    "dyhead_r50_rcnn_fpn_1x",
    "dyhead_swint_atss_fpn_2x_ms",
)

_OFFICIAL_DIR = Path(__file__).resolve().parent / "official"


def official_config_path(name: str) -> Path:
    """Return the path of a shipped official config, e.g. ``"dyhead_r50_atss_fpn_1x"``.

    Raises:
        ConfigError: ``name`` is not one of ``OFFICIAL_CONFIGS`` (the message lists them), or
            its file is missing from the installation.
    """
    return shipped_config_file(name, OFFICIAL_CONFIGS, _OFFICIAL_DIR, ".yaml", "official")


def shipped_config_file(name: str, names: Sequence[str], folder: Path, suffix: str, family: str) -> Path:
    """The file ``folder/<name><suffix>`` of a config shipped under one of ``names``.

    Raises:
        ConfigError: ``name`` is not one of ``names`` (the message lists them and suggests the
            closest), or its file is missing from the installation.
    """
    if name not in names:
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"no {family} config named {name!r}; {hint}the shipped ones are {', '.join(names)}")
    path = folder / f"{name}{suffix}"
    if not path.is_file():
        raise ConfigError(f"the shipped config file {str(path)!r} is missing: the installation is incomplete")
    return path
