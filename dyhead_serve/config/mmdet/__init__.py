"""mmdetection's DyHead configs: read without executing them, translated into our config tree.

Typical use (``load_config`` does this for ``.py`` files and the shipped names)::

    from dyhead_serve.config.mmdet import load_mmdet_config

    cfg = load_mmdet_config("atss_r50_fpn_dyhead_1x_coco")  # or a path to a config or a dump
    cfg.MODEL.LAYOUT  # "mmdet"

The three DyHead configs of mmdetection's model zoo are shipped under their mmdetection names
(:data:`MMDET_CONFIGS`), written for dyhead-serve with the same values.
"""

from __future__ import annotations

import os
from pathlib import Path

from dyhead_serve.config.mmdet.reader import read_mmdet_config
from dyhead_serve.config.mmdet.translate import mmdet_to_config
from dyhead_serve.config.node import CfgNode
from dyhead_serve.config.official import shipped_config_file

__all__ = ["MMDET_CONFIGS", "load_mmdet_config", "mmdet_config_path", "mmdet_to_config", "read_mmdet_config"]

MMDET_CONFIGS: tuple[str, ...] = (
    "atss_r50-caffe_fpn_dyhead_1x_coco",
    "atss_r50_fpn_dyhead_1x_coco",
    "atss_swin-l-p4-w12_fpn_dyhead_ms-2x_coco",
)

_SHIPPED_DIR = Path(__file__).resolve().parent / "configs"


def mmdet_config_path(name: str) -> Path:
    """The shipped file of one of :data:`MMDET_CONFIGS`.

    Raises:
        ConfigError: not a shipped name, or its file is missing from the installation.
    """
    return shipped_config_file(name, MMDET_CONFIGS, _SHIPPED_DIR, ".py", "shipped mmdetection")


def load_mmdet_config(config: str | os.PathLike[str]) -> CfgNode:
    """Our config for an mmdetection config: a shipped name, a config file (its ``_base_`` files
    beside it) or a resolved dump (``mmengine.Config.dump``).

    Raises:
        ConfigError: the file cannot be read safely, uses what the reader does not accept, or
            describes a model we do not reproduce; the message names the file and key.
    """
    path = mmdet_config_path(config) if isinstance(config, str) and config in MMDET_CONFIGS else Path(config)
    return mmdet_to_config(read_mmdet_config(path), str(path))
