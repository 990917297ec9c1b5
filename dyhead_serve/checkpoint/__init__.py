"""Checkpoints in one place: reading them safely, mapping their names, loading them with a report,
and the one weights cache and downloader.

- :mod:`~dyhead_serve.checkpoint.read`: the format of a file from its first bytes and its tensors
  as a flat dict (``.pth``/``.pt``/``.pkl``/``.safetensors``), with the restricted unpickler of
  :mod:`~dyhead_serve.checkpoint.unpickler`; nothing pickled is ever executed.
  :mod:`~dyhead_serve.checkpoint.pickle_budget` runs each pickle once with inert globals first, so
  that no file builds much more than it holds; weights with NaN or infinities are refused.
- :mod:`~dyhead_serve.checkpoint.safetensors_file`: the safetensors format, read and written.
- :mod:`~dyhead_serve.checkpoint.load`: compare with a model's ``state_dict()`` and load,
  through a :class:`KeyMap` for families that name tensors otherwise; the result is a
  :class:`LoadReport` (:mod:`~dyhead_serve.checkpoint.report`).
- Key maps: :mod:`~dyhead_serve.checkpoint.c2_names` (Detectron2's Caffe2 backbone names, suffix
  alignment) and :mod:`~dyhead_serve.checkpoint.mmdet_keys` (mmdetection's names of our tensors).
- :mod:`~dyhead_serve.checkpoint.model_weights`: ``MODEL.WEIGHTS`` (a file or a URL) loaded into a
  model to start training from.
- :mod:`~dyhead_serve.checkpoint.cache` and :mod:`~dyhead_serve.checkpoint.downloader`: the cache
  folder and the downloader that the zoo, ``MODEL.WEIGHTS`` URLs and ``zoo list`` share.

Every error a user can cause here derives from :class:`dyhead_serve.errors.UserError`.
"""

from __future__ import annotations

from dyhead_serve.checkpoint.cache import cache_dir, cached_weights_path
from dyhead_serve.checkpoint.downloader import DownloadError, checksum_problem, download, sha256_of
from dyhead_serve.checkpoint.load import KeyMap, compare_state_dicts, load_state_dict
from dyhead_serve.checkpoint.read import CheckpointFormat, checkpoint_format, read_state_dict
from dyhead_serve.checkpoint.report import CheckpointError, CheckpointMismatchError, LoadReport, ShapeMismatch
from dyhead_serve.checkpoint.safetensors_file import SafetensorsError

__all__ = [
    "CheckpointError",
    "CheckpointFormat",
    "CheckpointMismatchError",
    "DownloadError",
    "KeyMap",
    "LoadReport",
    "SafetensorsError",
    "ShapeMismatch",
    "cache_dir",
    "cached_weights_path",
    "checkpoint_format",
    "checksum_problem",
    "compare_state_dicts",
    "download",
    "load_state_dict",
    "read_state_dict",
    "sha256_of",
]
