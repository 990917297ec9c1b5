"""The errors of ``dyhead-export``: a user-facing failure of a subcommand, and of an export."""

from __future__ import annotations

from dyhead_serve.cli import CliError

__all__ = ["ExportCliError", "ExportError"]


class ExportCliError(CliError):
    """A user-facing error: one line, exit status 2."""


class ExportError(RuntimeError):
    """The model cannot be exported, or the exported graph fails its checks."""
