"""What every config file reader checks before and while it parses a file, so that no file (and no
chain of ``_BASE_`` files) can hang, exhaust or crash the reader. Every failure is a
:class:`~dyhead_serve.config.errors.ConfigError` saying which file and what is wrong, which the
command-line tools turn into ``error: ...`` and exit status 2.

The rules, shared by the Detectron2 YAML reader (:mod:`dyhead_serve.config.yaml_loader`) and meant
for any other config reader (mmdetection's Python configs, read through an AST walk):

- :func:`read_config_text`: a regular file only (no FIFO, device or directory; opened without
  blocking), at most ``MAX_CONFIG_BYTES``, UTF-8, no NUL character.
- :func:`resolve_base_path`: a base file is named by a path string (no URL), relative to the file
  that names it, with one of the reader's suffixes, and must be an existing regular file; a chain
  of bases is at most ``MAX_BASE_DEPTH`` files deep (cycles are the reader's to report).
- :func:`check_tree`: the parsed document, with shared nodes (YAML aliases) expanded as the
  consumer will see them, holds at most ``MAX_NODES`` values nested at most
  ``MAX_NESTING_DEPTH`` deep, and contains no cycle (a recursive alias).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

from dyhead_serve.config.errors import ConfigError

__all__ = [
    "MAX_BASE_DEPTH",
    "MAX_CONFIG_BYTES",
    "MAX_NESTING_DEPTH",
    "MAX_NODES",
    "check_tree",
    "read_config_text",
    "resolve_base_path",
]

# The official Detectron2 DyHead configs are under 2 KB and mmdetection's Python configs under
# 20 KB: a megabyte leaves room for any real config and bounds what a hostile one can cost.
MAX_CONFIG_BYTES = 1 << 20
# Real configs nest 6 or 7 levels deep (mmdetection's model.train_cfg.assigner ...).
MAX_NESTING_DEPTH = 32
# Values of one file after expanding aliases (a few hundred in real configs): an alias "billion
# laughs" of a kilobyte expands to billions and is refused here, before anything walks it.
MAX_NODES = 100_000
MAX_BASE_DEPTH = 16

Node = TypeVar("Node")


def read_config_text(
    path: str | os.PathLike[str], *, what: str = "config file", max_bytes: int = MAX_CONFIG_BYTES
) -> str:
    """The text of a config file, read with the limits above.

    Args:
        path: the file.
        what: how messages name it ("config file", "model.json").
        max_bytes: its largest accepted size.

    Raises:
        ConfigError: missing or unreadable, not a regular file, larger than ``max_bytes``,
            not UTF-8, or holding a NUL character.
    """
    source = os.fspath(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        reason = "no such file" if exc.errno == errno.ENOENT else exc.strerror or str(exc)
        raise ConfigError(f"cannot read {what} {source!r}: {reason}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # before fdopen, which refuses a directory itself
        os.close(fd)
        raise ConfigError(f"{what} {source!r} is not a regular file")
    with os.fdopen(fd, "rb") as stream:
        try:
            data = stream.read(max_bytes + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read {what} {source!r}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise ConfigError(f"{what} {source!r} is larger than {max_bytes // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {source!r} is not UTF-8 text (byte {exc.start})") from None
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise ConfigError(f"{what} {source!r} holds a NUL character (line {line}): not a text file")
    return text


def resolve_base_path(
    name: object,
    including: str | os.PathLike[str],
    *,
    key: str,
    suffixes: Collection[str],
    chain_length: int = 0,
) -> Path:
    """The file a base entry (``_BASE_`` of a YAML config, ``_base_`` of an mmdetection one) names.

    Args:
        name: the entry's value.
        including: the config file that names it; relative names are relative to its folder.
        key: the entry's key, for messages.
        suffixes: accepted file suffixes (``.yaml``/``.yml``, ``.py``), lower case.
        chain_length: how many files already include this one.

    Raises:
        ConfigError: not a string, a URL, another suffix, not an existing regular file, or a chain
            longer than ``MAX_BASE_DEPTH``.
    """
    source = os.fspath(including)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{key} in {source!r} must name a file, got {name!r}")
    if "://" in name:
        raise ConfigError(
            f"{key} {name!r} in {source!r}: remote base configs are not supported; download the file "
            "and name its path"
        )
    if chain_length >= MAX_BASE_DEPTH:
        raise ConfigError(f"{key} {name!r} in {source!r}: more than {MAX_BASE_DEPTH} nested base files")
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = Path(source).parent / path
    if path.suffix.lower() not in suffixes:
        raise ConfigError(
            f"{key} {name!r} in {source!r}: a base config must be a {' or '.join(sorted(suffixes))} file"
        )
    if not path.is_file():
        problem = "is not a regular file" if path.exists() else "does not exist"
        raise ConfigError(f"{key} file {str(path)!r} of {source!r} {problem}")
    return path


def check_tree(
    root: Node,
    children: Callable[[Node], Iterable[Node]],
    *,
    source: str,
    max_depth: int = MAX_NESTING_DEPTH,
    max_nodes: int = MAX_NODES,
) -> None:
    """Refuse a parsed document that is cyclic, too deep or too large once shared nodes are expanded.

    Shared nodes (YAML aliases) are walked once; their expanded size and depth are remembered, so
    the check costs one visit per distinct node however large the expansion.

    Args:
        root: the document's root node.
        children: a node's child nodes (keys and values of a mapping, items of a list).
        source: the file, for messages.

    Raises:
        ConfigError: a node contains itself, or the expansion nests deeper than ``max_depth``
            or holds more than ``max_nodes`` nodes.
    """
    size: dict[int, int] = {}  # id -> nodes in the expanded subtree
    depth: dict[int, int] = {}  # id -> levels of the expanded subtree
    on_path = {id(root)}
    stack: list[tuple[Node, Iterator[Node]]] = [(root, iter(children(root)))]
    while stack:
        node, pending = stack[-1]
        for child in pending:
            key = id(child)
            if key in on_path:
                raise ConfigError(
                    f"config file {source!r} holds a value that contains itself (a recursive alias)"
                )
            if key in depth:  # shared and already measured
                if len(stack) + depth[key] > max_depth:
                    _too_deep(source, max_depth)
                continue
            if len(stack) >= max_depth:
                _too_deep(source, max_depth)
            on_path.add(key)
            stack.append((child, iter(children(child))))
            break
        else:
            stack.pop()
            on_path.discard(id(node))
            kids = [id(kid) for kid in children(node)]
            size[id(node)] = 1 + sum(size[kid] for kid in kids)
            depth[id(node)] = 1 + max((depth[kid] for kid in kids), default=0)
            if size[id(node)] > max_nodes:
                raise ConfigError(
                    f"config file {source!r} expands to more than {max_nodes} values (aliases counted "
                    "as often as they are used)"
                )


def _too_deep(source: str, max_depth: int) -> NoReturn:
    raise ConfigError(f"config file {source!r} nests values more than {max_depth} levels deep")
