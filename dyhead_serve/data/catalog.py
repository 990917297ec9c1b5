"""Dataset names -> COCO json files and image folders, and the dataset dicts they hold.

Known without registration:

- Detectron2's builtin COCO splits (``coco_2017_train``, ``coco_2017_val``, ``coco_2014_minival``,
  ...), laid out under ``$DETECTRON2_DATASETS`` (default ``datasets``) exactly as Detectron2's
  ``builtin.py`` expects: ``coco/annotations/instances_val2017.json``, ``coco/val2017/``, ...
- ``synthetic_shapes_train`` / ``synthetic_shapes_val``: the procedurally generated dataset
  (:mod:`dyhead_serve.data.synthetic`), generated on first use into the cache folder.

Any other COCO-format dataset is added with :meth:`DatasetCatalog.register_coco` (on the command
line: ``--register-coco NAME JSON IMAGE_ROOT``). A catalog is a plain object passed to whoever
loads data; there is no global registry.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dyhead_serve.data.coco_json import DatasetDict, DatasetError, DatasetMetadata, load_coco_json
from dyhead_serve.data.synthetic import (
    SYNTHETIC_SPLITS,
    builtin_synthetic_paths,
    ensure_builtin_synthetic_dataset,
)

__all__ = [
    "BUILTIN_COCO_SPLITS",
    "DatasetCatalog",
    "DatasetEntry",
    "datasets_root",
    "filter_images_with_only_crowd_annotations",
    "get_detection_dataset_dicts",
]

logger = logging.getLogger(__name__)

# name -> (image folder, annotation file), relative to $DETECTRON2_DATASETS, as in Detectron2.
BUILTIN_COCO_SPLITS: dict[str, tuple[str, str]] = {
    "coco_2014_train": ("coco/train2014", "coco/annotations/instances_train2014.json"),
    "coco_2014_val": ("coco/val2014", "coco/annotations/instances_val2014.json"),
    "coco_2014_minival": ("coco/val2014", "coco/annotations/instances_minival2014.json"),
    "coco_2014_valminusminival": ("coco/val2014", "coco/annotations/instances_valminusminival2014.json"),
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
    "coco_2017_test": ("coco/test2017", "coco/annotations/image_info_test2017.json"),
    "coco_2017_test-dev": ("coco/test2017", "coco/annotations/image_info_test-dev2017.json"),
    "coco_2017_val_100": ("coco/val2017", "coco/annotations/instances_val2017_100.json"),
}

REGISTER_HINT = (
    "register a COCO-format dataset with --register-coco NAME JSON IMAGE_ROOT "
    "(DatasetCatalog.register_coco in Python), then name it in DATASETS.TRAIN / DATASETS.TEST"
)


def datasets_root() -> Path:
    """``$DETECTRON2_DATASETS``, or ``datasets`` (relative to the working directory) when unset."""
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets"))


@dataclass(frozen=True)
class DatasetEntry:
    """Where a named dataset lives.

    Attributes:
        name: the dataset's name.
        json_file: its COCO-format annotation file.
        image_root: the folder its image file names are relative to.
        prepare: makes the files exist (generates a synthetic split); ``None`` for datasets on disk.
    """

    name: str
    json_file: Path
    image_root: Path
    prepare: Callable[[], object] | None = None


class DatasetCatalog:
    """The datasets a command can name: the builtins and those registered on this catalog."""

    def __init__(self) -> None:
        self._registered: dict[str, DatasetEntry] = {}

    def register_coco(
        self, name: str, json_file: str | os.PathLike[str], image_root: str | os.PathLike[str]
    ) -> None:
        """Make the COCO-format dataset at ``json_file`` / ``image_root`` known as ``name``.

        Files are checked when the dataset is loaded, not here.

        Raises:
            DatasetError: ``name`` is a builtin, or already registered with other files.
        """
        if not name:
            raise DatasetError("a dataset name must not be empty")
        if name in BUILTIN_COCO_SPLITS or name in SYNTHETIC_SPLITS:
            raise DatasetError(f"{name!r} is a builtin dataset name; register yours under another name")
        entry = DatasetEntry(name, Path(json_file), Path(image_root))
        previous = self._registered.get(name)
        if previous is not None and previous != entry:
            raise DatasetError(
                f"dataset {name!r} is already registered with {previous.json_file} and {previous.image_root}"
            )
        self._registered[name] = entry

    def names(self) -> list[str]:
        """Every name this catalog resolves: builtins first, then registered ones."""
        return [*BUILTIN_COCO_SPLITS, *SYNTHETIC_SPLITS, *self._registered]

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def get(self, name: str) -> DatasetEntry:
        """Resolve ``name``; builtin COCO paths are read from ``$DETECTRON2_DATASETS`` now.

        Raises:
            DatasetError: an unknown name; the message lists the known ones and how to register.
        """
        if name in self._registered:
            return self._registered[name]
        if name in BUILTIN_COCO_SPLITS:
            image_dir, json_path = BUILTIN_COCO_SPLITS[name]
            root = datasets_root()
            return DatasetEntry(name, root / json_path, root / image_dir)
        if name in SYNTHETIC_SPLITS:
            split = SYNTHETIC_SPLITS[name]
            paths = builtin_synthetic_paths()
            return DatasetEntry(
                name,
                paths.json_file(split),
                paths.image_root(split),
                prepare=ensure_builtin_synthetic_dataset,
            )
        raise DatasetError(
            f"unknown dataset {name!r}; known datasets: {', '.join(self.names())}; {REGISTER_HINT}"
        )

    def load(self, name: str) -> tuple[list[DatasetDict], DatasetMetadata]:
        """The dataset dicts and metadata of ``name`` (generating a synthetic split if absent).

        Raises:
            DatasetError: unknown name, missing files or a malformed annotation file.
        """
        entry = self.get(name)
        if entry.prepare is not None:
            entry.prepare()
        if not entry.json_file.is_file():
            hint = ""
            if name in BUILTIN_COCO_SPLITS:
                hint = (
                    f"; builtin COCO datasets are read from $DETECTRON2_DATASETS "
                    f"(now {str(datasets_root())!r}), which must hold coco/annotations/ and the image "
                    "folders as Detectron2 lays them out"
                )
            raise DatasetError(
                f"dataset {name!r}: annotation file {str(entry.json_file)!r} does not exist{hint}"
            )
        if not entry.image_root.is_dir():
            raise DatasetError(f"dataset {name!r}: image folder {str(entry.image_root)!r} does not exist")
        return load_coco_json(entry.json_file, entry.image_root, name)


def filter_images_with_only_crowd_annotations(dicts: list[DatasetDict]) -> list[DatasetDict]:
    """Drop images without a non-crowd object (Detectron2's training-time filter)."""
    kept = [d for d in dicts if any(anno["iscrowd"] == 0 for anno in d["annotations"])]
    logger.info(
        "removed %d images with no usable annotations; %d images left", len(dicts) - len(kept), len(kept)
    )
    return kept


def get_detection_dataset_dicts(
    names: Sequence[str], catalog: DatasetCatalog, *, filter_empty: bool = True
) -> tuple[list[DatasetDict], DatasetMetadata]:
    """The dicts of several datasets, concatenated, as Detectron2's function of that name.

    Args:
        names: dataset names (``DATASETS.TRAIN``).
        catalog: resolves the names.
        filter_empty: drop images with no non-crowd object (``DATALOADER.FILTER_EMPTY_ANNOTATIONS``).

    Returns:
        (dicts, metadata of the first dataset).

    Raises:
        DatasetError: no names, an unknown or empty dataset, datasets whose classes differ, or
            nothing left after filtering.
    """
    if isinstance(names, str):
        names = [names]
    if not names:
        raise DatasetError("no dataset named (DATASETS.TRAIN / DATASETS.TEST is empty)")
    loaded = [catalog.load(name) for name in names]
    first = loaded[0][1]
    for dicts, metadata in loaded:
        if not dicts:
            raise DatasetError(f"dataset {metadata.name!r} has no images")
        if metadata.thing_classes != first.thing_classes:
            raise DatasetError(
                f"datasets {first.name!r} and {metadata.name!r} have different classes; "
                "datasets used together must share their categories"
            )
    all_dicts = [d for dicts, _ in loaded for d in dicts]
    if filter_empty:
        all_dicts = filter_images_with_only_crowd_annotations(all_dicts)
    if not all_dicts:
        raise DatasetError(f"no image with annotations left in {', '.join(names)}")
    return all_dicts, first
