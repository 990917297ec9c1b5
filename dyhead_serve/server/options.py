"""Detection options as a request states them, checked and resolved against the model's classes."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from pydantic import ValidationError

from dyhead_serve.server.errors import ApiError
from dyhead_serve.server.schemas import DetectOptionsIn

__all__ = ["MAX_CLASS_TOKENS", "DetectOptions", "parse_options", "resolve_classes"]

# More names or ids than any model has classes: a longer list is refused before it is walked.
MAX_CLASS_TOKENS = 4096
# A class id is ASCII digits: str.isdigit also accepts "²" and other digits that int() refuses.
_DIGITS = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class DetectOptions:
    """Checked options of one request.

    Attributes:
        score_threshold: minimum score of a returned detection (None: every detection the model's
            own threshold keeps).
        max_detections: keep at most this many detections per image (None: the model's limit).
        class_ids: keep only these classes (None: all).
    """

    score_threshold: float | None = None
    max_detections: int | None = None
    class_ids: frozenset[int] | None = None


def _tokens(values: Iterable[Any]) -> list[str | int]:
    tokens: list[str | int] = []
    for value in values:
        if isinstance(value, bool):
            raise ApiError(422, "invalid_option", "classes: expected class names or ids, got a boolean")
        if isinstance(value, int):
            tokens.append(value)
        else:
            text = str(value)
            if text.count(",") >= MAX_CLASS_TOKENS:
                _too_many_classes()
            tokens.extend(part.strip() for part in text.split(",") if part.strip())
        if len(tokens) > MAX_CLASS_TOKENS:
            _too_many_classes()
    return tokens


def _shorten(token: str) -> str:
    return token if len(token) <= 24 else f"{token[:24]}... ({len(token)} characters)"


def _too_many_classes() -> NoReturn:
    raise ApiError(422, "invalid_option", f"classes: give at most {MAX_CLASS_TOKENS} names or ids")


def resolve_classes(values: Sequence[Any], class_names: Sequence[str]) -> frozenset[int]:
    """Class ids for names (case-insensitive) or ids (ints or strings of ASCII digits).

    Raises:
        ApiError: 422 for an unknown name or an id out of range, listing what is known.
    """
    by_name = {name.lower(): index for index, name in enumerate(class_names)}
    ids: set[int] = set()
    for token in _tokens(values):
        if isinstance(token, str) and _DIGITS.fullmatch(token):
            if len(token.lstrip("-")) > 18:  # out of range whatever the model; int() could refuse it
                raise ApiError(422, "invalid_option", f"classes: id {_shorten(token)} is out of range")
            token = int(token)
        if isinstance(token, int):
            if not 0 <= token < len(class_names):
                raise ApiError(
                    422, "invalid_option",
                    f"classes: id {_shorten(str(token))} is out of range 0..{len(class_names) - 1}",
                )  # fmt: skip
            ids.add(token)
        elif token.lower() in by_name:
            ids.add(by_name[token.lower()])
        else:
            known = ", ".join(class_names[:20]) + (", ..." if len(class_names) > 20 else "")
            raise ApiError(
                422, "invalid_option", f"classes: unknown class {_shorten(token)!r}; known: {known}"
            )
    if not ids:
        raise ApiError(422, "invalid_option", "classes: give at least one class name or id")
    return frozenset(ids)


def parse_options(raw: Mapping[str, Any], class_names: Sequence[str]) -> DetectOptions:
    """Check ``score_threshold``, ``max_detections`` and ``classes`` (form strings or JSON values).

    Raises:
        ApiError: 422 ``invalid_option`` saying which option is wrong and why.
    """
    try:
        checked = DetectOptionsIn.model_validate(dict(raw))
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise ApiError(422, "invalid_option", details) from None
    class_ids = resolve_classes(checked.classes, class_names) if checked.classes is not None else None
    return DetectOptions(checked.score_threshold, checked.max_detections, class_ids)
