"""How a config value read from YAML or an override is decoded and checked against its default.

These rules follow yacs (the config library under Detectron2) so that a file means here what
it means to Detectron2:

- a string is passed through :func:`ast.literal_eval` and kept as is if that fails, so
  ``STEPS: (60000, 80000)`` becomes a tuple and ``NAME: ATSS`` stays a string;
- the result must have the type of the default, except that ``list`` and ``tuple`` convert into
  each other and ``None`` may replace (or be replaced by) any value.

Beyond yacs, three conveniences: an ``int`` is accepted where the default is a ``float``
(``SOLVER.BASE_LR 1`` gives ``1.0``); a string key keeps its text even when the text looks like
a literal (``OUTPUT_DIR: "1"`` stays ``"1"``); and lists/tuples nested in a sequence default take
the default's inner container type (a file's ``[[10, 10, 5, 5]]`` for a tuple of tuples gives a
tuple of tuples). So every config round-trips through :meth:`CfgNode.dump`.
"""

from __future__ import annotations

import ast
from typing import Any

from dyhead_serve.config.errors import ConfigError

__all__ = ["coerce_to_default_type", "decode_value", "describe", "validate_value"]

_SCALAR_TYPES = (str, int, float, bool, type(None))
_VALUE_TYPES = (*_SCALAR_TYPES, list, tuple)
_MAX_SHOWN_CHARS = 80


def describe(value: Any) -> str:
    """Name a value with its type for an error message, as in ``str 'abc'``."""
    text = repr(value)
    if len(text) > _MAX_SHOWN_CHARS:
        text = text[: _MAX_SHOWN_CHARS - 3] + "..."
    return f"{type(value).__name__} {text}"


def decode_value(value: Any) -> Any:
    """Decode a raw value as yacs does: ``literal_eval`` a string, or keep the string if it fails.

    Non-string values (what YAML already typed) are returned unchanged.
    """
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return value


def coerce_to_default_type(value: Any, default: Any, *, raw: Any, key: str, where: str) -> Any:
    """Return ``value`` converted to the type of ``default``, or raise a :class:`ConfigError`.

    Args:
        value: the decoded value (see :func:`decode_value`).
        default: the value the key has now (its default, or what an earlier merge set); its
            type is the expected one.
        raw: the value before decoding (a string kept as is for a string default).
        key: the full dotted key, for the error message.
        where: where the value came from, for the error message (``" (in x.yaml:3)"``).
    """
    expected = type(default)
    given = type(value)
    if given in (list, tuple) and expected in (list, tuple):
        return expected(_like_default_items(value, default))
    if given is expected:
        return value
    if value is None and expected in _VALUE_TYPES:
        return value
    if default is None and given in _VALUE_TYPES:
        return value
    if given is int and expected is float:
        return float(value)
    if expected is str and isinstance(raw, str):
        return raw
    hint = ""
    if expected in (list, tuple) and given is str:
        hint = "; write a YAML list such as [a, b], or a Python literal string such as \"('a',)\""
    raise ConfigError(
        f"type mismatch for config key {key!r}{where}: expected {expected.__name__} "
        f"(current value {default!r}), got {describe(value)}{hint}"
    )


def _like_default_items(value: list[Any] | tuple[Any, ...], default: Any) -> list[Any]:
    """Give inner lists/tuples the container type the default's items share, if they share one.

    ``((10.0, 10.0, 5.0, 5.0), ...)`` defaults stay tuples of tuples when a file (or a dump of
    the config) writes them as lists of lists. Items that are not sequences are kept as given.
    """
    inner = {type(item) for item in default}
    if len(inner) != 1 or not inner <= {list, tuple}:
        return list(value)
    (inner_type,) = inner
    items = []
    for item in value:
        if isinstance(item, list | tuple):
            item = inner_type(_like_default_items(item, default[0]))
        items.append(item)
    return items


def validate_value(value: Any, key: str, where: str) -> None:
    """Check that ``value`` is a plain config value: a scalar or (nested) lists/tuples of them.

    Raises:
        ConfigError: e.g. for a set, a dict inside a list, or a YAML timestamp.
    """
    if isinstance(value, list | tuple):
        for item in value:
            validate_value(item, key, where)
        return
    if type(value) not in _SCALAR_TYPES:
        raise ConfigError(
            f"invalid value for config key {key!r}{where}: {describe(value)}; config values are "
            "str, int, float, bool, None, or lists and tuples of them"
        )
