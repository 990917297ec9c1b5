"""``CfgNode``: a nested, freezable dict with attribute access, as in Detectron2 (yacs).

Reading is attribute access (``cfg.MODEL.RESNETS.DEPTH``). Merging a file, another config or a
``KEY VALUE`` list only sets keys that already exist, and only to values of the same type (see
:mod:`dyhead_serve.config.values`); a merge checks everything before it changes anything, so a
failed merge leaves the config as it was. Setting an attribute directly works as in yacs: it may
add a key, and is refused once the config is frozen.
"""

from __future__ import annotations

import copy
import difflib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import yaml

from dyhead_serve.config.errors import ConfigError, FrozenConfigError
from dyhead_serve.config.values import coerce_to_default_type, decode_value, describe, validate_value
from dyhead_serve.config.yaml_loader import BASE_KEY, RawConfig, load_yaml_with_base

__all__ = ["SUPPORTED_VERSION", "CfgNode"]

logger = logging.getLogger(__name__)

# Detectron2's current config format. Older ones (VERSION: 1) would need its upgrade rules.
SUPPORTED_VERSION = 2

# (node, key, value) writes of a merge, checked before any is made.
_Assignment = tuple["CfgNode", str, Any]


class CfgNode(dict[str, Any]):
    """A config group: a ``dict`` of keys to values or nested ``CfgNode`` groups.

    Values are ``str``, ``int``, ``float``, ``bool``, ``None``, lists/tuples of them, or
    ``CfgNode``; a plain ``dict`` given as a value becomes a ``CfgNode``. ``freeze()`` makes the
    whole tree refuse writes (lists inside it stay mutable Python lists, as in yacs).
    """

    _frozen: bool

    def __init__(self, init_dict: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_frozen", False)
        super().__init__()
        for key, value in (init_dict or {}).items():
            # Nested groups are rebuilt (as yacs does), so the new tree shares no node.
            self[key] = CfgNode(value) if isinstance(value, Mapping) else value

    # -- attribute access ---------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if not name.startswith("__"):
            try:
                return self[name]
            except KeyError:
                pass
        close = difflib.get_close_matches(name, [str(key) for key in self], n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise AttributeError(f"config has no key {name!r}{hint}")

    def __setattr__(self, name: str, value: Any) -> None:
        if hasattr(type(self), name):
            raise ConfigError(f"{name!r} cannot be a config key: it is a CfgNode attribute")
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    # -- every dict mutation goes through the frozen check ------------------------------
    def _check_writable(self, key: object) -> None:
        if self._frozen:
            raise FrozenConfigError(
                f"cannot change config key {key!r}: the config is frozen; work on "
                "cfg.clone() followed by defrost()"
            )

    def __setitem__(self, key: str, value: Any) -> None:
        self._check_writable(key)
        if not isinstance(key, str):
            raise ConfigError(f"config keys must be strings, got {describe(key)}")
        if isinstance(value, Mapping) and not isinstance(value, CfgNode):
            value = CfgNode(value)
        elif not isinstance(value, CfgNode):
            validate_value(value, key, "")
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._check_writable(key)
        super().__delitem__(key)

    def __ior__(self, other: Any) -> CfgNode:  # type: ignore[override,misc]
        self.update(other)
        return self

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Set keys as ``dict.update`` does, converting and checking each value."""
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: str, default: Any = None) -> Any:
        """Return ``self[key]``, first setting it to ``default`` if absent."""
        if key not in self:
            self[key] = default
        return self[key]

    def pop(self, key: str, *default: Any) -> Any:
        """Remove ``key`` and return its value, as ``dict.pop`` does."""
        self._check_writable(key)
        return super().pop(key, *default)

    def popitem(self) -> tuple[str, Any]:
        """Remove and return the last item, as ``dict.popitem`` does."""
        self._check_writable("<last item>")
        return super().popitem()

    def clear(self) -> None:
        """Remove every key."""
        self._check_writable("<all keys>")
        super().clear()

    # -- freezing, copying, printing ----------------------------------------------------
    def freeze(self) -> None:
        """Make this node and every node below it refuse writes."""
        self._set_frozen(True)

    def defrost(self) -> None:
        """Make this node and every node below it writable again."""
        self._set_frozen(False)

    def is_frozen(self) -> bool:
        """Whether this node refuses writes."""
        return self._frozen

    def _set_frozen(self, frozen: bool) -> None:
        object.__setattr__(self, "_frozen", frozen)
        for value in self.values():
            if isinstance(value, CfgNode):
                value._set_frozen(frozen)

    def clone(self) -> CfgNode:
        """Return a deep copy; frozen if this node is (as in yacs: ``defrost()`` it to edit)."""
        return copy.deepcopy(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> CfgNode:
        copied = CfgNode()
        for key, value in self.items():
            copied[key] = copy.deepcopy(value, memo)
        object.__setattr__(copied, "_frozen", self._frozen)
        return copied

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (dict(self), self._frozen))

    def __repr__(self) -> str:
        return f"CfgNode({super().__repr__()})"

    def to_dict(self) -> dict[str, Any]:
        """Return the config as nested plain dicts (lists and tuples kept as they are)."""
        return {key: value.to_dict() if isinstance(value, CfgNode) else value for key, value in self.items()}

    def dump(self, **kwargs: Any) -> str:
        """Return the config as a YAML string (tuples written as lists) that loads back unchanged.

        Keyword arguments go to :func:`yaml.safe_dump`.
        """
        return str(yaml.safe_dump(self.to_dict(), **kwargs))

    # -- merging ------------------------------------------------------------------------
    def merge_from_file(self, path: str | os.PathLike[str]) -> None:
        """Merge a YAML config file (and its ``_BASE_`` files) into this config.

        Raises:
            ConfigError: the file is missing or unreadable, uses an unsupported tag or
                expression, names a key this config does not have, gives a value of the wrong
                type, or declares a VERSION other than 2. Nothing is changed then.
        """
        source = os.fspath(path)
        if not os.path.isfile(source):
            raise ConfigError(f"config file {source!r} does not exist")
        raw = load_yaml_with_base(source)
        if "VERSION" not in raw.data:
            logger.warning(
                "config %r has no VERSION; assuming Detectron2's current VERSION %d",
                source,
                SUPPORTED_VERSION,
            )
        else:  # checked first: an old config would otherwise fail on its first renamed key
            self._plan_value(self, "VERSION", raw.data["VERSION"], "VERSION", raw.where("VERSION"))
        self._apply(self._plan_mapping(self, raw.data, "", raw))

    def merge_from_other_cfg(self, other: Mapping[str, Any]) -> None:
        """Merge another config (or a nested ``dict``) into this one, with the checks of a file."""
        self._apply(self._plan_mapping(self, other, "", None))

    def merge_from_list(self, overrides: Sequence[Any]) -> None:
        """Merge ``[KEY, VALUE, KEY, VALUE, ...]`` overrides, e.g. ``["MODEL.DEVICE", "cpu"]``.

        String values are decoded as in a file (``"50"`` -> ``50``, ``"(1, 2)"`` -> ``(1, 2)``)
        and must then match the type of the key's current value.

        Raises:
            ConfigError: an odd number of items, an unknown key, a key naming a group rather
                than a value, or a value of the wrong type. Nothing is changed then.
        """
        if isinstance(overrides, str | bytes) or not isinstance(overrides, Sequence):
            raise ConfigError(
                f"overrides must be a list such as ['MODEL.DEVICE', 'cpu'], got {describe(overrides)}"
            )
        if len(overrides) % 2:
            raise ConfigError(
                f"overrides must be KEY VALUE pairs, got an odd number of items ({len(overrides)}); "
                f"{overrides[-1]!r} has no value"
            )
        where = " (in overrides)"
        plan: list[_Assignment] = []
        for full_key, raw in zip(overrides[0::2], overrides[1::2], strict=True):
            if not isinstance(full_key, str):
                raise ConfigError(
                    f"override keys must be strings such as 'MODEL.DEVICE', got {describe(full_key)}"
                )
            if full_key == BASE_KEY:
                raise ConfigError(f"{BASE_KEY} can only be used in config files, not in overrides")
            node: CfgNode = self
            *parents, name = full_key.split(".")
            for part in parents:
                child = node.get(part)
                if not isinstance(child, CfgNode):
                    raise self._unknown_key_error(full_key, where)
                node = child
            plan.append(self._plan_value(node, name, raw, full_key, where))
        self._apply(plan)

    def _plan_mapping(
        self, node: CfgNode, updates: Mapping[str, Any], prefix: str, origin: RawConfig | None
    ) -> list[_Assignment]:
        """Check ``updates`` against ``node`` recursively; return the writes to make."""
        plan: list[_Assignment] = []
        for key, value in updates.items():
            full_key = f"{prefix}{key}"
            where = origin.where(full_key) if origin is not None else ""
            if not isinstance(key, str):
                raise ConfigError(f"config keys must be strings, got {describe(key)}{where}")
            current = node.get(key)
            if isinstance(current, CfgNode):
                if not isinstance(value, Mapping):
                    raise ConfigError(
                        f"config key {full_key!r}{where} is a group of keys ({_list_keys(current)}); "
                        f"give it a mapping, not {describe(value)}"
                    )
                plan.extend(self._plan_mapping(current, value, f"{full_key}.", origin))
            elif key not in node:
                leaf = _first_leaf(full_key, value)
                raise self._unknown_key_error(leaf, origin.where(leaf) if origin is not None else "")
            else:
                plan.append(self._plan_value(node, key, value, full_key, where))
        return plan

    def _plan_value(self, node: CfgNode, key: str, raw: Any, full_key: str, where: str) -> _Assignment:
        """Decode and check one value for ``node[key]``; return the write to make."""
        if key not in node:
            raise self._unknown_key_error(full_key, where)
        current = node[key]
        if isinstance(current, CfgNode):
            raise ConfigError(
                f"config key {full_key!r}{where} is a group of keys ({_list_keys(current)}); "
                f"override one of them, e.g. '{full_key}.{next(iter(current), 'KEY')}'"
            )
        if node.is_frozen():
            node._check_writable(full_key)
        value = coerce_to_default_type(decode_value(raw), current, raw=raw, key=full_key, where=where)
        validate_value(value, full_key, where)
        if full_key == "VERSION" and not (type(value) is int and value == SUPPORTED_VERSION):
            raise ConfigError(
                f"unsupported config VERSION {value!r}{where}: only VERSION {SUPPORTED_VERSION} "
                "(Detectron2's current config format) is supported"
            )
        return node, key, value

    @staticmethod
    def _apply(plan: list[_Assignment]) -> None:
        for node, key, value in plan:
            node[key] = value

    def _unknown_key_error(self, full_key: str, where: str) -> ConfigError:
        suggestions = _suggest_keys(self, full_key)
        hint = f"; did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        return ConfigError(f"unknown config key {full_key!r}{where}{hint}")


def _restore(items: dict[str, Any], frozen: bool) -> CfgNode:
    """Rebuild a node from pickle: its items are already restored nodes and values."""
    node = CfgNode()
    for key, value in items.items():
        dict.__setitem__(node, key, value)
    object.__setattr__(node, "_frozen", frozen)
    return node


def _list_keys(node: CfgNode, limit: int = 4) -> str:
    keys = list(node)
    shown = ", ".join(keys[:limit])
    return shown + (", ..." if len(keys) > limit else "")


def _first_leaf(full_key: str, value: Any) -> str:
    """Extend an unknown key into the first value it holds: 'MODEL.FOO' + {BAR: 1} -> 'MODEL.FOO.BAR'."""
    while isinstance(value, Mapping) and value:
        key, value = next(iter(value.items()))
        full_key = f"{full_key}.{key}"
    return full_key


def _iter_keys(node: CfgNode, prefix: str = "") -> Iterator[str]:
    for key, value in node.items():
        yield f"{prefix}{key}"
        if isinstance(value, CfgNode):
            yield from _iter_keys(value, f"{prefix}{key}.")


def _suggest_keys(root: CfgNode, full_key: str) -> list[str]:
    """Existing keys near ``full_key``: its first unknown part fixed, else the whole key, else its name."""
    known = set(_iter_keys(root))
    parts = full_key.split(".")
    node: Any = root
    depth = 0
    while depth < len(parts) and isinstance(node, CfgNode) and parts[depth] in node:
        node = node[parts[depth]]
        depth += 1
    suggestions: list[str] = []
    if isinstance(node, CfgNode) and depth < len(parts):
        for name in difflib.get_close_matches(parts[depth], list(node), n=3, cutoff=0.6):
            fixed = ".".join([*parts[:depth], name, *parts[depth + 1 :]])
            suggestions.append(fixed if fixed in known else ".".join([*parts[:depth], name]))
    if not suggestions:
        suggestions = difflib.get_close_matches(full_key, sorted(known), n=3, cutoff=0.8)
    if not suggestions:  # the right name in the wrong group: 'MODEL.DEPTH' -> 'MODEL.RESNETS.DEPTH'
        suggestions = [key for key in sorted(known) if key.rpartition(".")[2] == parts[-1]][:3]
    return list(dict.fromkeys(suggestions))
