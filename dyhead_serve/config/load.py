"""``load_config``: defaults, then a YAML file, then ``KEY VALUE`` overrides."""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dyhead_serve.config.defaults import get_default_config
from dyhead_serve.config.errors import ConfigError
from dyhead_serve.config.mmdet import MMDET_CONFIGS, load_mmdet_config, mmdet_config_path
from dyhead_serve.config.node import CfgNode
from dyhead_serve.config.normalisation import normalisation_problem
from dyhead_serve.config.official import OFFICIAL_CONFIGS, official_config_path

__all__ = ["load_config", "resolve_config_path"]


SHIPPED_CONFIGS: tuple[str, ...] = OFFICIAL_CONFIGS + MMDET_CONFIGS


def resolve_config_path(config: str | os.PathLike[str]) -> Path:
    """Return the file of ``config``: a shipped config's name (official Detectron2 YAML or
    mmdetection Python), or a path to a config file.

    Raises:
        ConfigError: neither a shipped name nor an existing file; the message lists the names.
    """
    if isinstance(config, str) and config in OFFICIAL_CONFIGS:
        return official_config_path(config)
    if isinstance(config, str) and config in MMDET_CONFIGS:
        return mmdet_config_path(config)
    path = Path(config).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise ConfigError(f"config {os.fspath(config)!r} is not a regular file")
    close = difflib.get_close_matches(path.stem, SHIPPED_CONFIGS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(
        f"config file {os.fspath(config)!r} does not exist; give the path of a Detectron2 YAML or "
        f"mmdetection .py file or the name of a shipped config{hint}: {', '.join(SHIPPED_CONFIGS)}"
    )


def load_config(
    config: str | os.PathLike[str],
    overrides: Sequence[Any] | None = None,
    *,
    freeze: bool = False,
) -> CfgNode:
    """Build a config as the official ``train_net.py`` does: defaults, the file, the overrides.

    An mmdetection config (a ``.py`` file, a resolved dump, or one of ``MMDET_CONFIGS``) is read
    without executing it and translated into the same keys (:mod:`dyhead_serve.config.mmdet`);
    the overrides then apply to those keys.

    Args:
        config: a path to a YAML or mmdetection ``.py`` file, or the name of a shipped config
            (one of ``OFFICIAL_CONFIGS``, e.g. ``"dyhead_r50_atss_fpn_1x"``, or of
            ``MMDET_CONFIGS``, e.g. ``"atss_r50_fpn_dyhead_1x_coco"``).
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
    path = resolve_config_path(config)
    if path.suffix == ".py":
        cfg = load_mmdet_config(path)
    else:
        cfg = get_default_config()
        cfg.merge_from_file(path)
    if overrides is not None:
        cfg.merge_from_list(overrides)
    problem = normalisation_problem(
        cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, ("MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD")
    )
    if problem is not None:
        raise ConfigError(f"{path}: {problem}")
    if freeze:
        cfg.freeze()
    return cfg
