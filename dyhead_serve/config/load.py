"""``load_config``: defaults, then a YAML file, then ``KEY VALUE`` overrides."""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dyhead_serve.config.defaults import get_default_config
from dyhead_serve.config.errors import ConfigError
from dyhead_serve.config.node import CfgNode
from dyhead_serve.config.official import OFFICIAL_CONFIGS, official_config_path

__all__ = ["load_config", "resolve_config_path"]


def resolve_config_path(config: str | os.PathLike[str]) -> Path:
    """Return the file of ``config``: a shipped config's name, or a path to a YAML file.

    Raises:
        ConfigError: neither a shipped name nor an existing file; the message lists the names.
    """
    if isinstance(config, str) and config in OFFICIAL_CONFIGS:
        return official_config_path(config)
    path = Path(config).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise ConfigError(f"config {os.fspath(config)!r} is not a regular file")
    close = difflib.get_close_matches(path.stem, OFFICIAL_CONFIGS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(
        f"config file {os.fspath(config)!r} does not exist; give the path of a YAML file or the name of "
        f"a shipped config{hint}: {', '.join(OFFICIAL_CONFIGS)}"
    )


def load_config(
    config: str | os.PathLike[str],
    overrides: Sequence[Any] | None = None,
    *,
    freeze: bool = False,
) -> CfgNode:
    """Build a config as the official ``train_net.py`` does: defaults, the file, the overrides.

    Args:
        config: a path to a YAML file, or the name of a shipped official config (one of
            ``OFFICIAL_CONFIGS``, e.g. ``"dyhead_r50_atss_fpn_1x"``).
        overrides: ``[KEY, VALUE, ...]`` pairs applied after the file, e.g.
            ``["MODEL.DEVICE", "cpu", "TEST.DETECTIONS_PER_IMAGE", "50"]``; string values are
            decoded as in a file and checked against the key's type.
        freeze: freeze the result, so that nothing can change it afterwards.

    Returns:
        A new config holding every key of :func:`get_default_config`.

    Raises:
        ConfigError: for a missing file, invalid YAML, an unsupported tag or expression, an
            unknown key, a value of the wrong type, an unsupported VERSION or malformed
            overrides. The message names the key and, for files, the file and line.
    """
    cfg = get_default_config()
    cfg.merge_from_file(resolve_config_path(config))
    if overrides is not None:
        cfg.merge_from_list(overrides)
    if freeze:
        cfg.freeze()
    return cfg
