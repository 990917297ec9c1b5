"""The error every ``dyhead-export`` subcommand raises for a user-facing failure."""

from __future__ import annotations

from dyhead_serve.cli import CliError

__all__ = ["ExportCliError"]


class ExportCliError(CliError):
    """A user-facing error: one line, exit status 2."""
