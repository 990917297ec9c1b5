"""How other processes run this installation's ``dyhead-export`` (the export and engine caches, tools)."""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from dyhead_serve.model_source import ModelSourceError

__all__ = ["exporter_command", "override_flags"]

# The module that runs ``dyhead-export`` (the command-line layer, which this package never imports).
_EXPORTER_MODULE = "dyhead_serve.cli.export"


def _installed_command(script: str, module: str) -> list[str]:
    """The command line that runs console script ``script`` of this installation.

    The script installed beside this interpreter (the same environment, whatever ``PATH`` says);
    where there is none (a source tree on ``PYTHONPATH``), ``python -m module`` with this
    interpreter. ``module`` is a namespaced module, so a folder of the working directory with a
    generic name can never shadow it.
    """
    scripts = Path(sysconfig.get_path("scripts"))
    for candidate in (scripts / script, Path(sys.executable).parent / script):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return [str(candidate)]
    return [sys.executable, "-m", module]


def exporter_command() -> list[str]:
    """The command line of this installation's ``dyhead-export``: the console script beside
    this interpreter, else ``python -m dyhead_serve.cli.export``."""
    return _installed_command("dyhead-export", _EXPORTER_MODULE)


def override_flags(overrides: Sequence[str]) -> list[str]:
    """Flattened ``KEY VALUE`` overrides as ``--set KEY VALUE`` flags (for a command line)."""
    if len(overrides) % 2:
        raise ModelSourceError(f"config overrides come in KEY VALUE pairs, got {list(overrides)}")
    return [arg for i in range(0, len(overrides), 2) for arg in ("--set", overrides[i], overrides[i + 1])]
