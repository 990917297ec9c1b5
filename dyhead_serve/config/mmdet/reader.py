"""Read mmdetection (mmengine) Python config files without executing them.

A config file is parsed with :mod:`ast` and a whitelist of its constructs is interpreted:

- statements: assignments to plain names (``model = dict(...)``, ``a = b = 1``) and bare string
  expressions (docstrings); nothing else (no imports, ``if``, ``for``, ``def``, ``with``);
- values: literals (``str``, ``int``, ``float``, ``bool``, ``None``), list, tuple and dict
  displays, ``dict(key=value, ...)``, names bound earlier in the same file, ``_base_.a.b``,
  ``+ - * / // % **`` on numbers, ``+`` on strings, lists and tuples, ``*`` of a list or tuple by
  an integer count, subscripts by a literal index or key, and f-strings of such values. The
  arithmetic is the bounded one of :mod:`dyhead_serve.config.safe_eval`, which the YAML reader
  shares: integers stay below ``2**64`` in magnitude at every step, and sequences built by ``+``
  or ``*`` at most :data:`~dyhead_serve.config.safe_eval.MAX_SEQUENCE` long.

Inheritance follows mmengine's ``Config.fromfile``: ``_base_`` names one file or a list of files
relative to the config's folder; the bases are read first (no key may appear in two bases), the
file's own assignments are evaluated, ``{{_base_.a.b}}`` placeholders are replaced by the base
values, and the file's values are merged into the bases: dicts merge key by key unless they hold
``_delete_=True``, anything else replaces. A resolved dump (``Config.dump``) is a file without
``_base_`` and reads the same way.

Hostile files are refused with a :class:`~dyhead_serve.config.ConfigError`, by the rules every
config reader shares (:mod:`dyhead_serve.config.file_limits`): regular UTF-8 files of at most
1 MiB without NUL characters, ``_base_`` files that exist, at most 16 deep, values nested at most
32 deep and at most 100 000 of them once shared names are counted at each use (so that names
nested in names cannot build an exponentially large config). Ours on top: no file under
``/proc``, ``/sys`` or ``/dev``, no inheritance cycle, at most :data:`MAX_FILES` bases in one
``_base_``, and the arithmetic bounds above.
"""

from __future__ import annotations

import ast
import copy
import os
import re
from pathlib import Path
from typing import Any

from dyhead_serve.config.errors import ConfigError
from dyhead_serve.config.file_limits import MAX_NESTING_DEPTH, check_tree, read_config_text, resolve_base_path
from dyhead_serve.config.safe_eval import MAX_SEQUENCE, ExpressionError, binary_operation, unary_operation

__all__ = ["MAX_FILES", "merge_into", "read_mmdet_config"]

MAX_FILES = 64
BASE_KEY = "_base_"
DELETE_KEY = "_delete_"
_SPECIAL_ROOTS = ("/proc", "/sys", "/dev")
_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_BASE_REFERENCE = re.compile(r"\s*_base_\.([\w.]+)\s*")
_MARKER = "__dyhead_serve_base_reference_{}__"


def read_mmdet_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an mmdetection config file (its ``_base_`` files merged in) into plain data.

    Returns:
        The config as mmengine's ``Config.fromfile(path).to_dict()`` would give it: dicts,
        lists, tuples, strings, numbers, booleans and None.

    Raises:
        ConfigError: the file (or a base) cannot be read, uses anything outside the whitelist
            (see the module docstring) or breaks a limit; the message names file and line.
    """
    return _read(Path(path), stack=())


def merge_into(child: dict[str, Any], base: dict[str, Any], where: str = "") -> dict[str, Any]:
    """mmengine's merge of a child config into its base (a new dict; neither input changes)."""
    merged = dict(base)
    for key, value in child.items():
        if isinstance(value, dict):
            value = dict(value)
            delete = value.pop(DELETE_KEY, False)
            if key in merged and not delete:
                if not isinstance(merged[key], dict):
                    raise ConfigError(
                        f"{where}: {key} is a dict here but a {type(merged[key]).__name__} in the base "
                        f"config; set {DELETE_KEY}=True to replace it"
                    )
                merged[key] = merge_into(value, merged[key], where)
            else:
                merged[key] = _strip_delete(value)
        else:
            merged[key] = value
    return merged


def _strip_delete(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_delete(v) for k, v in value.items() if k != DELETE_KEY}
    if isinstance(value, list):
        return [_strip_delete(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_strip_delete(v) for v in value)
    return value


# --------------------------------------------------------------------------------------------
# Files


def _read_source(path: Path) -> str:
    """The text of a config file, after the checks that keep hostile files out."""
    resolved = os.path.realpath(path)
    if any(resolved == root or resolved.startswith(root + "/") for root in _SPECIAL_ROOTS):
        raise ConfigError(f"config file {os.fspath(path)}: refusing a path under {', '.join(_SPECIAL_ROOTS)}")
    return read_config_text(path)


def _read(path: Path, stack: tuple[Path, ...]) -> dict[str, Any]:
    if path.suffix != ".py":
        raise ConfigError(f"config file {path}: mmdetection configs are read from .py files only")
    key = Path(os.path.realpath(path))
    if key in stack:
        chain = " -> ".join(str(p) for p in (*stack, key))
        raise ConfigError(f"config file {path}: _base_ inheritance loops back on itself ({chain})")
    text, references = _substitute_placeholders(_read_source(path), path)
    tree = _parse(text, path)
    base_names = _base_files(tree, path)
    base: dict[str, Any] = {}
    for name in base_names:
        base_path = resolve_base_path(name, path, key=BASE_KEY, suffixes={".py"}, chain_length=len(stack) + 1)
        loaded = _read(base_path, (*stack, key))
        duplicates = sorted(set(base) & set(loaded))
        if duplicates:
            raise ConfigError(f"config file {path}: keys {duplicates} are set by more than one _base_ file")
        base.update(loaded)
    namespace = _Evaluator(path, base).run(tree)
    # Names may share values: measured (sharing counted at each use) before anything walks them.
    check_tree(namespace, _children, source=str(path))
    for marker, dotted in references.items():
        namespace = _replace_marker(namespace, marker, _lookup(base, dotted, path))
    own = {k: v for k, v in namespace.items() if k != BASE_KEY and not k.startswith("__")}
    merged = merge_into(own, base, str(path))
    check_tree(merged, _children, source=str(path))
    return merged


def _children(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [*value.keys(), *value.values()]
    return list(value) if isinstance(value, list | tuple) else []


def _substitute_placeholders(text: str, path: Path) -> tuple[str, dict[str, str]]:
    """Replace each ``{{_base_.a.b}}`` by a quoted marker, as mmengine does; refuse the other
    ``{{ ... }}`` substitutions (predefined and environment variables)."""
    references: dict[str, str] = {}

    def replace(match: re.Match[str]) -> str:
        reference = _BASE_REFERENCE.fullmatch(match.group(1))
        if reference is None:
            line = text.count("\n", 0, match.start()) + 1
            raise ConfigError(
                f"{path}:{line}: only {{{{_base_.name}}}} substitutions are supported, not {match.group(0)!r}"
            )
        marker = _MARKER.format(len(references))
        references[marker] = reference.group(1)
        return repr(marker)

    return _PLACEHOLDER.sub(replace, text), references


def _parse(text: str, path: Path) -> ast.Module:
    try:
        return ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid Python ({exc.msg})") from exc
    except (RecursionError, MemoryError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot be parsed ({type(exc).__name__}: nested too deeply?)") from exc


def _base_files(tree: ast.Module, path: Path) -> list[str]:
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == BASE_KEY for t in statement.targets
        ):
            value = statement.value
            items = value.elts if isinstance(value, ast.List | ast.Tuple) else [value]
            names = []
            for item in items:
                if not (isinstance(item, ast.Constant) and isinstance(item.value, str)):
                    raise ConfigError(
                        f"{path}:{statement.lineno}: _base_ must be a file name or a list of them"
                    )
                if "::" in item.value:
                    raise ConfigError(
                        f"{path}:{statement.lineno}: _base_ {item.value!r} names a file inside an installed "
                        "package; copy that file beside the config and name it by a relative path"
                    )
                names.append(item.value)
            if len(names) > MAX_FILES:
                raise ConfigError(f"{path}: more than {MAX_FILES} _base_ files")
            return names
    return []


def _lookup(base: dict[str, Any], dotted: str, path: Path) -> Any:
    value: Any = base
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ConfigError(f"{path}: _base_.{dotted} is not set by the _base_ files")
        value = value[part]
    return copy.deepcopy(value)


def _replace_marker(value: Any, marker: str, replacement: Any) -> Any:
    if isinstance(value, str) and value == marker:
        return replacement
    if isinstance(value, dict):
        return {k: _replace_marker(v, marker, replacement) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_marker(v, marker, replacement) for v in value]
    if isinstance(value, tuple):
        return tuple(_replace_marker(v, marker, replacement) for v in value)
    return value


# --------------------------------------------------------------------------------------------
# Evaluation


class _Evaluator:
    """Interprets the whitelisted statements and expressions of one config file."""

    def __init__(self, path: Path, base: dict[str, Any]) -> None:
        self.path = path
        self.base = base
        self.namespace: dict[str, Any] = {}

    def fail(self, node: ast.AST, message: str) -> ConfigError:
        return ConfigError(f"{self.path}:{getattr(node, 'lineno', '?')}: {message}")

    def run(self, tree: ast.Module) -> dict[str, Any]:
        for statement in tree.body:
            if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
                continue  # a docstring
            if not isinstance(statement, ast.Assign):
                raise self.fail(
                    statement, f"{_describe(statement)} is not allowed in a config file (assignments only)"
                )
            if any(isinstance(t, ast.Name) and t.id == BASE_KEY for t in statement.targets):
                continue  # read by _base_files
            value = self.value(statement.value, 0)
            for target in statement.targets:
                if not isinstance(target, ast.Name):
                    raise self.fail(
                        statement, "only plain names can be assigned (no unpacking, attributes or items)"
                    )
                self.namespace[target.id] = value
        return self.namespace

    def value(self, node: ast.AST, depth: int) -> Any:
        if depth > MAX_NESTING_DEPTH:
            raise self.fail(node, f"values nested more than {MAX_NESTING_DEPTH} levels deep")
        depth += 1
        if isinstance(node, ast.Constant):
            if node.value is None or isinstance(node.value, bool | int | float | str):
                return node.value
            raise self.fail(node, f"a {type(node.value).__name__} literal is not allowed")
        if isinstance(node, ast.List):
            return [self.value(e, depth) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(self.value(e, depth) for e in node.elts)
        if isinstance(node, ast.Dict):
            return self.dict_display(node, depth)
        if isinstance(node, ast.Call):
            return self.dict_call(node, depth)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.Attribute):
            return self.base_attribute(node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            operand = self.value(node.operand, depth)
            try:
                return unary_operation(node.op, operand)
            except ExpressionError as exc:
                raise self.fail(node, str(exc)) from None
        if isinstance(node, ast.BinOp):
            return self.binary(node, depth)
        if isinstance(node, ast.Subscript):
            return self.subscript(node, depth)
        if isinstance(node, ast.JoinedStr):
            return self.fstring(node, depth)
        raise self.fail(node, f"{_describe(node)} is not allowed in a config value")

    def dict_display(self, node: ast.Dict, depth: int) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        for key_node, value_node in zip(node.keys, node.values, strict=True):
            if key_node is None:
                raise self.fail(node, "dict unpacking (**) is not allowed")
            key = self.value(key_node, depth)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise self.fail(key_node, "dict keys must be strings or numbers")
            result[key] = self.value(value_node, depth)
        return result

    def dict_call(self, node: ast.Call, depth: int) -> dict[str, Any]:
        if not (isinstance(node.func, ast.Name) and node.func.id == "dict"):
            raise self.fail(
                node, f"calling {ast.unparse(node.func)!r} is not allowed; only dict(key=value, ...)"
            )
        if node.args or any(k.arg is None for k in node.keywords):
            raise self.fail(node, "dict(...) takes keyword arguments only")
        return {str(k.arg): self.value(k.value, depth) for k in node.keywords}

    def name(self, node: ast.Name) -> Any:
        if node.id in self.namespace:
            return self.namespace[node.id]
        if node.id == BASE_KEY:
            return self.base
        raise self.fail(node, f"name {node.id!r} is not defined earlier in this file")

    def base_attribute(self, node: ast.Attribute) -> Any:
        parts: list[str] = []
        current: ast.AST = node
        while isinstance(current, ast.Attribute):
            parts.insert(0, current.attr)
            current = current.value
        if not (isinstance(current, ast.Name) and current.id == BASE_KEY):
            raise self.fail(node, "attribute access is allowed on _base_ only (_base_.model.backbone)")
        return _lookup(self.base, ".".join(parts), self.path)

    def binary(self, node: ast.BinOp, depth: int) -> Any:
        left, right = self.value(node.left, depth), self.value(node.right, depth)
        try:
            return binary_operation(node.op, left, right, sequences=True)
        except ExpressionError as exc:
            raise self.fail(node, str(exc)) from None

    def subscript(self, node: ast.Subscript, depth: int) -> Any:
        container = self.value(node.value, depth)
        index = self.value(node.slice, depth)
        try:
            if isinstance(container, list | tuple) and isinstance(index, int) and not isinstance(index, bool):
                return container[index]
            if isinstance(container, dict) and index in container:
                return container[index]
        except IndexError:
            pass
        raise self.fail(node, f"cannot index a {type(container).__name__} with {index!r}")

    def fstring(self, node: ast.JoinedStr, depth: int) -> str:
        parts = []
        length = 0
        for part in node.values:
            if isinstance(part, ast.Constant):
                text = str(part.value)
            elif isinstance(part, ast.FormattedValue) and part.conversion == -1 and part.format_spec is None:
                value = self.value(part.value, depth)
                if not isinstance(value, str | int | float):
                    raise self.fail(node, "f-strings may format strings and numbers only")
                text = str(value)
            else:
                raise self.fail(node, "f-strings with conversions or format specs are not allowed")
            # Counted part by part: one long string named many times must not be joined first.
            length += len(text)
            if length > MAX_SEQUENCE:
                raise self.fail(node, f"a string longer than {MAX_SEQUENCE} characters")
            parts.append(text)
        return "".join(parts)


def _describe(node: ast.AST) -> str:
    names = {
        ast.Import: "import",
        ast.ImportFrom: "import",
        ast.With: "a with block (new-style lazy-import configs are not supported: dump it with mmengine)",
        ast.FunctionDef: "a function definition",
        ast.ClassDef: "a class definition",
        ast.Lambda: "a lambda",
        ast.ListComp: "a list comprehension",
        ast.DictComp: "a dict comprehension",
        ast.GeneratorExp: "a generator expression",
        ast.If: "an if statement",
        ast.For: "a for loop",
    }
    return names.get(type(node), f"a {type(node).__name__} node")
