"""The error of an export: the model cannot be exported, or the exported graph fails its checks."""

from __future__ import annotations

from dyhead_serve.errors import UserError

__all__ = ["ExportError"]


class ExportError(UserError, RuntimeError):
    """The model cannot be exported, or the exported graph fails its checks."""
