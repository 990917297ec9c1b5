"""``--register-coco NAME JSON IMAGE_ROOT``: the command-line side of the dataset catalog,
shared by ``train`` and ``eval``."""

from __future__ import annotations

import argparse

from dyhead_serve.data.catalog import DatasetCatalog

__all__ = ["add_register_coco_argument", "catalog_from_args"]


def add_register_coco_argument(parser: argparse.ArgumentParser) -> None:
    """Add the repeatable ``--register-coco NAME JSON IMAGE_ROOT`` option to ``parser``."""
    parser.add_argument(
        "--register-coco",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="make a COCO-format dataset known as NAME (annotation file JSON, images under "
        "IMAGE_ROOT), to be named in DATASETS.TRAIN / DATASETS.TEST; repeatable. Builtin names "
        "(coco_2017_train, coco_2017_val, ..., under $DETECTRON2_DATASETS, default ./datasets; "
        "synthetic_shapes_train/val, generated on first use) need no registration",
    )


def catalog_from_args(args: argparse.Namespace) -> DatasetCatalog:
    """A catalog with the builtin datasets and every ``--register-coco`` of ``args``.

    Raises:
        DatasetError: a name registered twice with different files, or a builtin name.
    """
    catalog = DatasetCatalog()
    for name, json_file, image_root in getattr(args, "register_coco", None) or []:
        catalog.register_coco(name, json_file, image_root)
    return catalog
