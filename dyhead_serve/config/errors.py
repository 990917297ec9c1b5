"""The one exception type of the config package."""

from __future__ import annotations

from dyhead_serve.errors import UserError


class ConfigError(UserError, ValueError):
    """A config file, override or value that cannot be used.

    The message says which key (and, where known, which file and line) is at fault and what
    to change.
    """


class FrozenConfigError(ConfigError, AttributeError):
    """A write to a frozen :class:`~dyhead_serve.config.CfgNode`.

    Also an ``AttributeError``, as writes to a frozen dataclass are.
    """
