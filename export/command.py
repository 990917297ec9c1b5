"""How other processes run this installation's ``dyhead-export`` (the engine cache, tools)."""

from __future__ import annotations

from dyhead_serve.cli import installed_command

__all__ = ["exporter_command"]


def exporter_command() -> list[str]:
    """The command line of this installation's ``dyhead-export``: the console script beside
    this interpreter, else ``python -m dyhead_serve.export``."""
    return installed_command("dyhead-export", "dyhead_serve.export")
