"""Configs for DyHead models: a safe reader for the official Detectron2 YAML files.

Typical use::

    from dyhead_serve.config import load_config

    cfg = load_config("dyhead_r50_atss_fpn_1x", overrides=["MODEL.DEVICE", "cpu"])
    cfg.MODEL.RESNETS.DEPTH  # 50

``load_config`` starts from Detectron2's defaults plus the official DyHead additions
(:func:`get_default_config`), merges the file (``_BASE_`` files first) and then the overrides.
Files are read with a safe YAML loader; the ``!!python/object/apply:eval`` anchor-size
expressions of the official files are interpreted, never executed. Every problem is a
:class:`ConfigError` that names the key.
"""

from dyhead_serve.config.defaults import get_default_config
from dyhead_serve.config.errors import ConfigError, FrozenConfigError
from dyhead_serve.config.load import load_config, resolve_config_path
from dyhead_serve.config.node import SUPPORTED_VERSION, CfgNode
from dyhead_serve.config.official import OFFICIAL_CONFIGS, official_config_path

__all__ = [
    "OFFICIAL_CONFIGS",
    "SUPPORTED_VERSION",
    "CfgNode",
    "ConfigError",
    "FrozenConfigError",
    "get_default_config",
    "load_config",
    "official_config_path",
    "resolve_config_path",
]
