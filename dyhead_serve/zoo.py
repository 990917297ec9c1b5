"""Named models: the four official DyHead checkpoints and the embedded default model, usable
wherever a config and weights are accepted."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from dyhead_serve.data.synthetic import SHAPE_CLASSES
from dyhead_serve.errors import UserError

__all__ = [
    "DEFAULT_MODEL",
    "ZOO",
    "ZooError",
    "ZooModel",
    "cache_dir",
    "demo_model_notice",
    "download",
    "get_model",
    "sha256_of",
    "weights_path",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
# sha256 of dyhead_serve/zoo_files/default/model.safetensors, as trained (see README.md)
DEFAULT_SHA256 = "7cf6076bb36d72533720f185003564861806e28b7cd7ba94bc0aa5ac1a33cfea"
_PACKAGE = Path(__file__).parent
_OFFICIAL_URL = "https://xiyang.blob.core.windows.net/public/{}.pth"
_MMDET_URL = "https://download.openmmlab.com/mmdetection/v2.0/dyhead/{}"


@dataclass(frozen=True)
class ZooModel:
    """One named model.

    Attributes:
        name: the name to pass to ``--model``.
        config: shipped config name (see ``dyhead_serve.config.OFFICIAL_CONFIGS`` and
            ``dyhead_serve.config.mmdet.MMDET_CONFIGS``).
        url: where the official README (or mmdetection's metafile) links the weights.
        sha256: checksum of the weights file; empty where no copy could be hashed here, in which
            case a download is checked for size and loadability instead.
        sha256_prefix: the leading hex digits of the checksum that OpenMMLab writes into its
            file names (``...-162888e6.pth``), checked when no full ``sha256`` is known.
        description: architecture and backbone.
        coco_ap: box AP on COCO val2017 as the official README reports it.
        embedded: weights shipped inside the package (path relative to ``dyhead_serve/``) instead
            of a download; ``config`` is then package-relative too.
        class_names: names of the classes when they are not COCO's.
    """

    name: str
    config: str
    url: str
    sha256: str
    description: str
    coco_ap: float | None = None
    embedded: str | None = None
    class_names: tuple[str, ...] | None = None
    sha256_prefix: str = ""

    def checksum_problem(self, path: Path) -> str | None:
        """Why ``path`` is not this model's weights file by its checksum, or None."""
        if not (self.sha256 or self.sha256_prefix):
            return None
        digest = sha256_of(path)
        if self.sha256 and digest != self.sha256:
            return f"checksum mismatch (expected sha256 {self.sha256})"
        if not digest.startswith(self.sha256_prefix):
            return f"checksum mismatch (expected a sha256 starting with {self.sha256_prefix})"
        return None

    @property
    def config_path(self) -> str:
        """What ``load_config`` takes: a shipped official name or the packaged file."""
        return str(_PACKAGE / self.config) if self.embedded else self.config


def _official(name: str, description: str, coco_ap: float) -> ZooModel:
    return ZooModel(name, name, _OFFICIAL_URL.format(name), "", description, coco_ap)


def _mmdet(name: str, file: str, description: str, coco_ap: float) -> ZooModel:
    """An mmdetection zoo model: its config is shipped under the same name; its file name ends
    with the first 8 hex digits of the file's sha256 (OpenMMLab's convention)."""
    prefix = file.rsplit("-", 1)[1].removesuffix(".pth")
    return ZooModel(name, name, _MMDET_URL.format(file), "", description, coco_ap, sha256_prefix=prefix)


ZOO: dict[str, ZooModel] = {
    m.name: m
    for m in (
        _official("dyhead_r50_atss_fpn_1x", "ATSS + DyHead, ResNet-50, 1x", 42.4),
        _official("dyhead_r50_retina_fpn_1x", "RetinaNet + DyHead, ResNet-50, 1x", 39.9),
        _official("dyhead_r50_rcnn_fpn_1x", "Faster R-CNN + DyHead, ResNet-50, 1x", 40.3),
        _official("dyhead_swint_atss_fpn_2x_ms", "ATSS + DyHead, Swin-Tiny, 2x multi-scale", 49.8),
        _mmdet(
            "atss_r50-caffe_fpn_dyhead_1x_coco",
            "atss_r50_fpn_dyhead_for_reproduction_1x_coco/"
            "atss_r50_fpn_dyhead_for_reproduction_4x4_1x_coco_20220107_213939-162888e6.pth",
            "mmdetection: ATSS + DyHead, ResNet-50 caffe, 1x (the reproduction setting)",
            42.5,
        ),
        _mmdet(
            "atss_r50_fpn_dyhead_1x_coco",
            "atss_r50_fpn_dyhead_4x4_1x_coco/atss_r50_fpn_dyhead_4x4_1x_coco_20211219_023314-eaa620c6.pth",
            "mmdetection: ATSS + DyHead, ResNet-50, 1x (the simple setting)",
            43.3,
        ),
        _mmdet(
            "atss_swin-l-p4-w12_fpn_dyhead_ms-2x_coco",
            "atss_swin-l-p4-w12_fpn_dyhead_mstrain_2x_coco/"
            "atss_swin-l-p4-w12_fpn_dyhead_mstrain_2x_coco_20220509_100315-bc5b6516.pth",
            "mmdetection: ATSS + DyHead, Swin-L (window 12), 2x multi-scale",
            56.2,
        ),
        ZooModel(
            DEFAULT_MODEL,
            "zoo_files/default/config.yaml",
            url="",
            sha256=DEFAULT_SHA256,
            description="small DyHead-ATSS (ResNet-18 at quarter width, 2 DyHead blocks) trained on the "
            "generated shapes dataset; shipped with its ONNX export",
            embedded="zoo_files/default/model.safetensors",
            class_names=SHAPE_CLASSES,
        ),
    )
}


def demo_model_notice(how_to_name: str = "--model dyhead_r50_atss_fpn_1x") -> str:
    """What a newcomer should know when the embedded default model runs because no model was
    named: it detects six generated shapes, not everyday objects, and how to run a COCO model."""
    shapes = ", ".join(SHAPE_CLASSES)
    return (
        f"the embedded demo model detects six synthetic shapes only ({shapes}); for the 80 COCO "
        f"object classes, name a COCO model: {how_to_name} (downloads the official weights; "
        "`dyhead-serve zoo list` lists the models)"
    )


class ZooError(UserError, RuntimeError):
    """A named model is unknown or its weights cannot be obtained."""


def get_model(name: str) -> ZooModel:
    """The zoo entry called ``name``; an unknown name lists the known ones."""
    if name not in ZOO:
        raise ZooError(
            f"unknown model {name!r}; known models: {', '.join(ZOO)} (see `dyhead-serve zoo list`)"
        )
    return ZOO[name]


def cache_dir() -> Path:
    """``$DYHEAD_SERVE_CACHE``, else ``~/.cache/dyhead-serve``."""
    root = os.environ.get("DYHEAD_SERVE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "dyhead-serve"


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(
    url: str,
    target: Path,
    sha256: str = "",
    *,
    timeout: float = 30.0,
    progress: bool = True,
    sha256_prefix: str = "",
) -> Path:
    """Download ``url`` to ``target`` (atomically, with a progress bar) and verify it (against
    ``sha256``, or the leading digits ``sha256_prefix``, when given).

    Raises:
        ZooError: no network, HTTP error, empty file or checksum mismatch; the message says how
            to supply the file by hand.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    by_hand = f"download {url} by hand and pass its path with --weights PATH (or place it at {target})"
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ZooError(f"cannot download {target.name} ({reason}); {by_hand}") from exc
    total = int(response.headers.get("Content-Length") or 0) or None
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".part-", delete=False) as tmp:
        tmp_path = Path(tmp.name)
        try:
            with response, tqdm(
                total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress
            ) as bar:  # fmt: skip
                while block := response.read(1 << 20):
                    tmp.write(block)
                    bar.update(len(block))
        except (OSError, urllib.error.URLError) as exc:
            tmp_path.unlink(missing_ok=True)
            raise ZooError(f"download of {target.name} broke off ({exc}); {by_hand}") from exc
    if tmp_path.stat().st_size == 0 or (total is not None and tmp_path.stat().st_size != total):
        tmp_path.unlink(missing_ok=True)
        raise ZooError(f"download of {target.name} is incomplete; {by_hand}")
    problem = ZooModel("", "", url, sha256, "", sha256_prefix=sha256_prefix).checksum_problem(tmp_path)
    if problem:
        tmp_path.unlink(missing_ok=True)
        raise ZooError(f"{target.name}: {problem}; {by_hand}")
    shutil.move(str(tmp_path), target)
    logger.info("downloaded %s (%d bytes)", target, target.stat().st_size)
    return target


def weights_path(model: ZooModel, *, download_missing: bool = True) -> Path:
    """The weights of ``model``: shipped in the package, or cached (downloaded first when absent
    and allowed)."""
    if model.embedded:
        shipped = _PACKAGE / model.embedded
        if not shipped.is_file():
            raise ZooError(f"{shipped}: the embedded weights are missing from this installation")
        if model.sha256 and sha256_of(shipped) != model.sha256:
            raise ZooError(f"{shipped}: checksum mismatch with the zoo's sha256; reinstall dyhead-serve")
        return shipped
    target = cache_dir() / "weights" / Path(model.url).name
    if target.is_file():
        problem = model.checksum_problem(target)
        if problem:
            raise ZooError(f"{target}: {problem}; delete it and download again")
        return target
    if not download_missing:
        raise ZooError(f"{target} is not cached; download {model.url} and pass --weights PATH")
    return download(model.url, target, model.sha256, sha256_prefix=model.sha256_prefix)
