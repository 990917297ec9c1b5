"""The rules every field of a ``model.json`` is checked with, and :class:`ArtifactError`.

A model folder can come from anywhere, so nothing in its ``model.json`` is trusted: each part is
read by the class it describes, which checks every field with these rules (type, range, length)
and refuses unknown and missing fields: :meth:`InputSpec.from_dict
<dyhead_serve.pipeline.preprocess.InputSpec.from_dict>`, each decoder's ``from_dict``
(:mod:`dyhead_serve.decode`), and :mod:`dyhead_serve.runtime.artifact_schema` for the whole
document. A failure is an :class:`ArtifactError` that names the field
(``decoder.spec.strides[0]: expected an integer in [1, 1024], got 0``).

A foundation module (like :mod:`dyhead_serve.errors`): the decode, pipeline and runtime layers
all read parts of model.json, so the rules sit below all of them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

from dyhead_serve.errors import UserError

__all__ = [
    "ArtifactError",
    "Rule",
    "boolean",
    "dataclass_record",
    "integer",
    "list_of",
    "mapping",
    "number",
    "one_of",
    "record",
    "text",
]


class ArtifactError(UserError, ValueError):
    """A ``model.json`` that cannot be used; the message names the field and what is wrong."""


Rule = Callable[[Any, str], Any]
"""Checks a value found at a field path and returns it normalised; raises :class:`ArtifactError`."""


def _fail(path: str, expected: str, value: Any) -> ArtifactError:
    shown = repr(value)
    return ArtifactError(f"{path}: expected {expected}, got {shown[:80]}{'...' if len(shown) > 80 else ''}")


def integer(low: int, high: int) -> Rule:
    """An integer (not a boolean) in [low, high]."""

    def check(value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _fail(path, f"an integer in [{low}, {high}]", value)
        return value

    return check


def number(low: float, high: float, *, above_low: bool = False) -> Rule:
    """A finite number (not a boolean) in [low, high], or (low, high] with ``above_low``."""

    def check(value: Any, path: str) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value > high or value < low or (above_low and value == low):
            raise _fail(path, f"a finite number in {'(' if above_low else '['}{low}, {high}]", value)
        return float(value)

    return check


def one_of(*choices: str) -> Rule:
    def check(value: Any, path: str) -> str:
        if value not in choices or not isinstance(value, str):
            raise _fail(path, "one of " + ", ".join(repr(c) for c in choices), value)
        return value

    return check


def text(max_length: int = 256) -> Rule:
    """A non-empty string of at most ``max_length`` characters."""

    def check(value: Any, path: str) -> str:
        if not isinstance(value, str) or not 0 < len(value) <= max_length:
            raise _fail(path, f"a non-empty string of at most {max_length} characters", value)
        return value

    return check


def boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, "true or false", value)
    return value


def list_of(item: Rule, *, min_length: int = 0, max_length: int = 100_000) -> Rule:
    """A JSON list of ``min_length`` to ``max_length`` items, each checked by ``item``."""

    def check(value: Any, path: str) -> list[Any]:
        if not isinstance(value, list) or not min_length <= len(value) <= max_length:
            size = f"{min_length}" if min_length == max_length else f"{min_length} to {max_length}"
            raise _fail(path, f"a list of {size} items", value)
        return [item(v, f"{path}[{i}]") for i, v in enumerate(value)]

    return check


def mapping(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(path, "an object", value)
    return value


def record(rules: dict[str, Rule], required: Sequence[str]) -> Rule:
    """An object with exactly these fields (those in ``required`` must be present)."""

    def check(value: Any, path: str) -> dict[str, Any]:
        fields = mapping(value, path)
        unknown = sorted(set(fields) - set(rules))
        if unknown:
            raise ArtifactError(
                f"{path or 'the top level'}: unknown field {unknown[0]!r} (this version knows "
                f"{', '.join(rules)}); was the model exported by a newer dyhead-serve?"
            )
        for name in required:
            if name not in fields:
                raise ArtifactError(f"{_join(path, name)}: missing")
        return {name: rules[name](fields[name], _join(path, name)) for name in fields}

    return check


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def dataclass_record(spec_class: type, rules: dict[str, Rule]) -> Rule:
    """:func:`record` of a spec dataclass: its fields without a default are required; ``rules``
    may hold more fields than the dataclass (fields a file may carry that it does not keep)."""
    required = [
        f.name
        for f in dataclasses.fields(spec_class)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    return record(rules, required)
