"""``MODEL.WEIGHTS``: where the weights a training run starts from come from, and how they load.

- A local :func:`torch.save` file (an official checkpoint, or one of ours): tensors load by
  exact name. A file that covers the whole model loads strictly; otherwise (e.g. a
  backbone-only file) whatever matches loads and the rest keeps its initialisation, with a
  report.
- A plain pickle: a Detectron2 ``.pkl`` (the ImageNet backbones its configs name), or one named
  ``.pth`` (how Detectron2 conversion scripts save third-party backbones, e.g. the
  ``swin_tiny_patch4_window7_224_d2.pth`` the official Swin-T config names): Caffe2 names are
  converted (:mod:`dyhead_serve.training.c2_names`) and every file is aligned to the model by
  name suffix, as Detectron2 does; the report lists what stayed unmatched (the ImageNet
  classifier, the detector's new layers). Which of the two a file is comes from its contents,
  not its suffix (:func:`~dyhead_serve.checkpoint.checkpoint_format`).
- ``detectron2://PATH`` (Detectron2's model-zoo prefix for
  ``https://dl.fbaipublicfiles.com/detectron2/PATH``) and ``http(s)://`` URLs are downloaded
  once into the cache (``$DYHEAD_SERVE_CACHE``, default ``~/.cache/dyhead-serve``); without
  network the error says to download the file and pass its local path.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from dyhead_serve.checkpoint import (
    CheckpointFormat,
    LoadReport,
    checkpoint_format,
    compare_state_dicts,
    load_state_dict,
    read_state_dict,
)
from dyhead_serve.distributed import get_world_size, is_main_process
from dyhead_serve.errors import UserError
from dyhead_serve.training.c2_names import align_to_model, convert_c2_names, is_c2_checkpoint

__all__ = ["DETECTRON2_PREFIX", "WeightsError", "initialize_from_weights", "resolve_weights"]

logger = logging.getLogger(__name__)

DETECTRON2_PREFIX = "detectron2://"
DETECTRON2_URL = "https://dl.fbaipublicfiles.com/detectron2/"


class WeightsError(UserError, RuntimeError):
    """``MODEL.WEIGHTS`` names something that cannot be obtained; the message says what to do."""


def _url_of(spec: str) -> str | None:
    if spec.startswith(DETECTRON2_PREFIX):
        return DETECTRON2_URL + spec[len(DETECTRON2_PREFIX) :]
    if spec.startswith(("http://", "https://")):
        return spec
    return None


def resolve_weights(spec: str, *, download: bool = True) -> Path:
    """The local file of ``MODEL.WEIGHTS``: a path as given, or a URL's cached download.

    In a distributed run only the main process downloads; call this on every process after
    the main one has (``initialize_from_weights`` does).

    Raises:
        WeightsError: the file does not exist, or the URL cannot be downloaded.
    """
    from dyhead_serve.zoo import ZooError, cache_dir
    from dyhead_serve.zoo import download as download_url

    url = _url_of(spec)
    if url is None:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise WeightsError(f"MODEL.WEIGHTS {spec!r}: no such file")
        return path
    target = cache_dir() / "weights" / url.rsplit("/", 1)[-1]
    if target.is_file():
        return target
    by_hand = (
        f"download {url} yourself (e.g. `curl -LO {url}`) and pass its local path: "
        f"MODEL.WEIGHTS /path/to/{target.name} (or place it at {target})"
    )
    if not download:
        raise WeightsError(f"MODEL.WEIGHTS {spec!r} is not in the cache; {by_hand}")
    logger.info("downloading %s to %s", url, target)
    try:
        return download_url(url, target, progress=is_main_process())
    except ZooError as exc:
        reason = str(exc).split(";", 1)[0]
        raise WeightsError(f"MODEL.WEIGHTS {spec!r}: {reason}; {by_hand}") from exc


def initialize_from_weights(model: nn.Module, spec: str) -> LoadReport:
    """Load ``MODEL.WEIGHTS`` into ``model`` (see the module docstring).

    Returns:
        The load report (``ok`` when every model tensor came from the file and nothing was
        left over); a partial load is also logged at WARNING.

    Raises:
        WeightsError: the weights cannot be obtained.
        CheckpointError: the file cannot be read.
    """
    if get_world_size() > 1:
        import torch.distributed as dist

        if is_main_process():
            path = resolve_weights(spec)
        dist.barrier()
        if not is_main_process():
            path = resolve_weights(spec, download=False)
    else:
        path = resolve_weights(spec)
    state = read_state_dict(path)
    model_state = model.state_dict()
    if checkpoint_format(path) is CheckpointFormat.PICKLE:
        if is_c2_checkpoint(state):
            logger.info("%s holds Caffe2 names: converting them as Detectron2 does", path)
            state = convert_c2_names(state)
        state = align_to_model(model_state, state)
    report = compare_state_dicts(state, model_state, source=str(path))
    if report.ok:
        return load_state_dict(model, state, strict=True)
    logger.warning(
        "MODEL.WEIGHTS covers part of the model; the rest keeps its initialisation.\n%s", report.format()
    )
    skipped = {mismatch.name for mismatch in report.shape_mismatches}
    names = [name for name in model_state if name in state and name not in skipped]
    with torch.no_grad():
        for name in names:
            model_state[name].copy_(state[name])
    logger.info("loaded %d of %d model tensors from %s", len(names), len(model_state), path)
    return report
