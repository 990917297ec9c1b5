"""``--version`` of both console scripts: the installed distribution's version."""

from __future__ import annotations

import argparse
from importlib import metadata

import dyhead_serve

__all__ = ["add_version_argument", "package_version"]

DISTRIBUTION = "dyhead-serve"


def package_version() -> str:
    """The version pip installed (``importlib.metadata``), or the package's own ``__version__``
    when it runs from a source tree that was never installed."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return dyhead_serve.__version__


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--version``: print ``PROG VERSION`` and exit 0."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
