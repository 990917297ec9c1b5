"""Read Detectron2 YAML config files without executing anything.

A :class:`yaml.SafeLoader` subclass that also understands the one Python tag the official DyHead
files use, ``!!python/object/apply:eval ["<expression>"]``, by handing the expression to
:func:`~dyhead_serve.config.safe_eval.safe_eval`. Any other non-standard tag is an error. Before
anything is constructed, the node tree is walked once to reject such tags, to reject duplicate
keys, and to note on which line each key stands, so that errors can name the key and line.

``_BASE_`` works as in Detectron2 (fvcore): a file names one base file or a list of them,
relative to its own directory; bases are merged first and the file's own values win.

Every file, bases included, is read and checked with the limits of
:mod:`dyhead_serve.config.file_limits` (a regular UTF-8 file of at most 1 MiB without NUL; bases
are ``.yaml``/``.yml`` files; no recursive alias; at most 100 000 values once aliases are
expanded, nested at most 32 deep), so that no file can hang or crash the reader.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dyhead_serve.config.errors import ConfigError
from dyhead_serve.config.file_limits import check_tree, read_config_text, resolve_base_path
from dyhead_serve.config.safe_eval import ExpressionError, safe_eval

__all__ = ["BASE_KEY", "EVAL_TAG", "RawConfig", "load_yaml_with_base", "read_yaml_file"]

BASE_KEY = "_BASE_"
EVAL_TAG = "tag:yaml.org,2002:python/object/apply:eval"
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_SUFFIXES = (".yaml", ".yml")


@dataclass
class RawConfig:
    """The plain data of a config file (bases merged in), and where each key was written.

    Attributes:
        data: the file's mapping, as YAML gives it (strings not yet decoded).
        source: the file that was loaded.
        lines: dotted key -> ``"path:line"`` of the file and line that set it.
    """

    data: dict[str, Any]
    source: str
    lines: dict[str, str] = field(default_factory=dict)

    def where(self, key: str) -> str:
        """Say where ``key`` (or its nearest enclosing key) was set, as ``" (in x.yaml:3)"``."""
        parts = key.split(".")
        for end in range(len(parts), 0, -1):
            found = self.lines.get(".".join(parts[:end]))
            if found is not None:
                return f" (in {found})"
        return f" (in {self.source})"


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader plus the eval tag; remembers the key each eval-tagged node belongs to."""

    def __init__(self, stream: str, source: str) -> None:
        super().__init__(stream)
        self.source = source
        self.node_keys: dict[int, str] = {}
        self.lines: dict[str, str] = {}

    def location(self, node: yaml.Node) -> str:
        return f"{self.source}:{node.start_mark.line + 1}"


def _construct_eval(loader: _ConfigLoader, node: yaml.Node) -> Any:
    key = loader.node_keys.get(id(node), "<unknown>")
    where = loader.location(node)
    items = node.value if isinstance(node, yaml.SequenceNode) else None
    if (
        items is None
        or len(items) != 1
        or not isinstance(items[0], yaml.ScalarNode)
        or items[0].tag != _STR_TAG
    ):
        raise ConfigError(
            f"config key {key!r} (in {where}): !!python/object/apply:eval takes a list with exactly one "
            'expression string, as in !!python/object/apply:eval ["[[x*2,] for x in [32, 64]]"]'
        )
    expression = items[0].value
    try:
        return safe_eval(expression)
    except ExpressionError as exc:
        raise ConfigError(
            f"config key {key!r} (in {where}): cannot evaluate {expression!r}: {exc}. Expressions are "
            "never executed; only arithmetic on numbers, list/tuple displays and one list "
            "comprehension over a literal list are understood"
        ) from None


def _construct_unknown(loader: _ConfigLoader, node: yaml.Node) -> Any:
    # Unreachable after _check_nodes; kept so that no tag can ever fall through to a constructor.
    raise ConfigError(f"unsupported YAML tag {node.tag!r} (in {loader.location(node)})")


_ConfigLoader.add_constructor(EVAL_TAG, _construct_eval)
_ConfigLoader.add_constructor(None, _construct_unknown)
_KNOWN_TAGS = frozenset(tag for tag in _ConfigLoader.yaml_constructors if tag is not None)


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else tag


def _check_nodes(loader: _ConfigLoader, root: yaml.Node) -> None:
    """Reject unknown tags and duplicate or non-string keys; record key paths and lines."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:  # an alias of a node already checked
            continue
        seen.add(id(node))
        if node.tag not in _KNOWN_TAGS:
            raise ConfigError(
                f"unsupported YAML tag {_short_tag(node.tag)!r} for config key {path or '<top level>'!r} "
                f"(in {loader.location(node)}); only plain YAML and !!python/object/apply:eval "
                "(for arithmetic) are allowed"
            )
        if node.tag == EVAL_TAG:
            loader.node_keys[id(node)] = path
        elif isinstance(node, yaml.MappingNode):
            stack.extend(_mapping_children(loader, node, path))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{path}[{index}]") for index, item in enumerate(node.value))


def _child_nodes(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _mapping_children(
    loader: _ConfigLoader, node: yaml.MappingNode, path: str
) -> Iterator[tuple[yaml.Node, str]]:
    keys_here: set[str] = set()
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            yield value_node, path
            continue
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR_TAG:
            raise ConfigError(
                f"config keys must be strings; found a {_short_tag(key_node.tag)} key under "
                f"{path or '<top level>'!r} (in {loader.location(key_node)})"
            )
        child = f"{path}.{key_node.value}" if path else key_node.value
        if key_node.value in keys_here:
            raise ConfigError(f"duplicate config key {child!r} (in {loader.location(key_node)})")
        keys_here.add(key_node.value)
        loader.lines[child] = loader.location(key_node)
        yield value_node, child


def read_yaml_file(path: str | os.PathLike[str]) -> RawConfig:
    """Read one YAML config file, without following ``_BASE_``.

    Raises:
        ConfigError: the file cannot be read, is not YAML, is not a mapping, or uses a tag other
            than the standard ones and ``!!python/object/apply:eval`` with a safe expression.
    """
    source = os.fspath(path)
    text = read_config_text(source)
    loader: _ConfigLoader | None = None
    try:
        loader = _ConfigLoader(text, source)
        root = loader.get_single_node()
        if root is None:  # an empty file
            return RawConfig({}, source)
        check_tree(root, _child_nodes, source=source)
        _check_nodes(loader, root)
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {source!r} is not valid YAML: {_one_line(exc)}") from None
    except RecursionError:
        raise ConfigError(f"config file {source!r} is nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {source!r} must hold a mapping of config keys, got {type(data).__name__}"
        )
    return RawConfig(data, source, loader.lines)


def _merge_raw(update: dict[str, Any], base: dict[str, Any], source: str) -> None:
    """Merge ``update`` into ``base`` in place, mappings recursively, as fvcore does for ``_BASE_``."""
    for key, value in update.items():
        if isinstance(value, dict) and key in base:
            if not isinstance(base[key], dict):
                raise ConfigError(
                    f"config key {key!r} in {source!r} is a mapping, but its _BASE_ sets it to "
                    f"{type(base[key]).__name__} {base[key]!r}"
                )
            _merge_raw(value, base[key], source)
        else:
            base[key] = value


def _base_paths(raw: RawConfig, chain_length: int) -> list[Path]:
    bases = raw.data.pop(BASE_KEY)
    names = bases if isinstance(bases, list) else [bases]
    if not names:
        raise ConfigError(f"{BASE_KEY} in {raw.source!r} must be a file name or a list of file names, got []")
    return [
        resolve_base_path(name, raw.source, key=BASE_KEY, suffixes=_SUFFIXES, chain_length=chain_length)
        for name in names
    ]


def _one_line(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line message condensed to 'problem (line L, column C)'."""
    if isinstance(exc, yaml.MarkedYAMLError):
        problem = exc.problem or exc.context or "syntax error"
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return f"{problem}{where}"
    return " ".join(str(exc).split())


def load_yaml_with_base(path: str | os.PathLike[str], _chain: tuple[Path, ...] = ()) -> RawConfig:
    """Read a YAML config file and, recursively, the ``_BASE_`` files it names.

    Args:
        path: the config file.

    Returns:
        The merged data, in which the values of ``path`` override those of its bases, with no
        ``_BASE_`` key left.

    Raises:
        ConfigError: as :func:`read_yaml_file`, or for a missing base file or a cycle of bases.
    """
    resolved = Path(path).resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain[_chain.index(resolved) :], resolved))
        raise ConfigError(f"{BASE_KEY} files form a cycle: {cycle}")
    raw = read_yaml_file(path)
    if BASE_KEY not in raw.data:
        return raw
    merged = RawConfig({}, raw.source)
    for base_path in _base_paths(raw, len(_chain)):
        base = load_yaml_with_base(base_path, (*_chain, resolved))
        _merge_raw(base.data, merged.data, base.source)
        merged.lines.update(base.lines)
    _merge_raw(raw.data, merged.data, raw.source)
    merged.lines.update(raw.lines)
    merged.lines.pop(BASE_KEY, None)
    return merged
