"""Evaluate the arithmetic that official configs hide behind ``!!python/object/apply:eval``.

The official DyHead YAML files compute their anchor sizes with Python expressions such as
``[[x, x * 2**(1.0/3), x * 2**(2.0/3)] for x in [32, 64, 128, 256, 512]]``. Detectron2 runs
them with ``eval``; we parse them with :mod:`ast` and interpret a small whitelist instead, so a
config file can never run code:

- numbers (``int`` and ``float`` literals, not ``bool``);
- list and tuple displays;
- unary ``+``/``-`` and binary ``+ - * / **`` on numbers (never on lists: no ``[0] * 10**9``);
- one list comprehension level, ``[expr for name in <list or tuple display>]``, without ``if``
  clauses; ``expr`` may use the loop variable and nothing else.

Everything else (names, calls, attributes, subscripts, strings, ...) is an
:class:`ExpressionError` saying what was found.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping
from typing import Any

from dyhead_serve.config.errors import ConfigError

__all__ = ["MAX_EXPRESSION_CHARS", "ExpressionError", "safe_eval"]

MAX_EXPRESSION_CHARS = 1000
# Integers stay within 64 bits so that ``**`` cannot be used to make the interpreter
# compute (or allocate) a gigantic number.
_MAX_INT_BITS = 64

_BINARY_OPS: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.Pow: "**",
}


class ExpressionError(ConfigError):
    """An expression outside the whitelist of :func:`safe_eval`, or one that fails to evaluate."""


def safe_eval(expression: str) -> Any:
    """Evaluate a whitelisted arithmetic expression without executing any code.

    Args:
        expression: Python source such as ``"[[x*2,] for x in [32, 64, 128, 256, 512]]"``.

    Returns:
        The value: a number, or (nested) lists and tuples of numbers.

    Raises:
        ExpressionError: the expression is not valid Python, uses anything outside the
            whitelist described in the module docstring, is longer than
            ``MAX_EXPRESSION_CHARS``, or fails (division by zero, overflow, complex result).
    """
    if not isinstance(expression, str):
        raise ExpressionError(f"expected the expression as a string, got {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(
            f"expression is {len(expression)} characters long; at most {MAX_EXPRESSION_CHARS} are allowed"
        )
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"not a valid Python expression: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ExpressionError(f"not a valid Python expression: {exc}") from None
    return _evaluate(tree.body, {})


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _checked_number(value: Any) -> int | float:
    """Reject results that are complex, non-finite or beyond 64-bit integers."""
    if type(value) is int:
        if value.bit_length() > _MAX_INT_BITS:
            raise ExpressionError(f"integer result exceeds {_MAX_INT_BITS} bits")
        return value
    if type(value) is float:
        if not math.isfinite(value):
            raise ExpressionError(f"result {value!r} is not a finite number")
        return value
    raise ExpressionError(f"result of type {type(value).__name__} is not a real number")


def _evaluate(node: ast.expr, env: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        if not _is_number(node.value):
            raise ExpressionError(f"only numeric literals are allowed, found {node.value!r}")
        return _checked_number(node.value)
    if isinstance(node, ast.List | ast.Tuple):
        if any(isinstance(element, ast.Starred) for element in node.elts):
            raise ExpressionError("starred (*) unpacking is not allowed")
        elements = [_evaluate(element, env) for element in node.elts]
        return elements if isinstance(node, ast.List) else tuple(elements)
    if isinstance(node, ast.UnaryOp):
        return _evaluate_unary(node, env)
    if isinstance(node, ast.BinOp):
        return _evaluate_binary(node, env)
    if isinstance(node, ast.Name):
        if node.id in env:
            return env[node.id]
        raise ExpressionError(
            f"name {node.id!r} is not allowed; only the variable of a list comprehension may be used"
        )
    if isinstance(node, ast.ListComp):
        return _evaluate_comprehension(node, env)
    if isinstance(node, ast.Call):
        raise ExpressionError("function calls are not allowed")
    if isinstance(node, ast.Attribute):
        raise ExpressionError(f"attribute access ('.{node.attr}') is not allowed")
    raise ExpressionError(f"{type(node).__name__} expressions are not allowed")


def _evaluate_unary(node: ast.UnaryOp, env: Mapping[str, Any]) -> int | float:
    if not isinstance(node.op, ast.UAdd | ast.USub):
        raise ExpressionError(f"unary operator {type(node.op).__name__} is not allowed")
    operand = _evaluate(node.operand, env)
    if not _is_number(operand):
        raise ExpressionError(f"unary +/- needs a number, got {type(operand).__name__}")
    return operand if isinstance(node.op, ast.UAdd) else _checked_number(-operand)


def _evaluate_binary(node: ast.BinOp, env: Mapping[str, Any]) -> int | float:
    symbol = _BINARY_OPS.get(type(node.op))
    if symbol is None:
        raise ExpressionError(f"operator {type(node.op).__name__} is not allowed; use one of + - * / **")
    left = _evaluate(node.left, env)
    right = _evaluate(node.right, env)
    if not (_is_number(left) and _is_number(right)):
        raise ExpressionError(
            f"operator {symbol} needs two numbers, got {type(left).__name__} and {type(right).__name__}"
        )
    # For integers, |left| >= 2**(bits - 1): the result is known too large before it is computed.
    too_large = (
        symbol == "**"
        and type(left) is int
        and type(right) is int
        and (abs(left).bit_length() - 1) * right > _MAX_INT_BITS
    )
    if too_large:
        raise ExpressionError(f"{left} ** {right} exceeds {_MAX_INT_BITS} bits")
    try:
        if symbol == "+":
            result = left + right
        elif symbol == "-":
            result = left - right
        elif symbol == "*":
            result = left * right
        elif symbol == "/":
            result = left / right
        else:
            result = left**right
    except ZeroDivisionError:
        raise ExpressionError(f"division by zero in {left!r} {symbol} {right!r}") from None
    except OverflowError:
        raise ExpressionError(f"numeric overflow in {left!r} {symbol} {right!r}") from None
    return _checked_number(result)


def _evaluate_comprehension(node: ast.ListComp, env: Mapping[str, Any]) -> list[Any]:
    if env:
        raise ExpressionError("nested list comprehensions are not allowed")
    if len(node.generators) != 1:
        raise ExpressionError("a list comprehension may have only one 'for' clause")
    generator = node.generators[0]
    if generator.ifs:
        raise ExpressionError("'if' clauses in list comprehensions are not allowed")
    if generator.is_async:
        raise ExpressionError("async comprehensions are not allowed")
    if not isinstance(generator.target, ast.Name):
        raise ExpressionError("the comprehension variable must be a single name")
    if not isinstance(generator.iter, ast.List | ast.Tuple):
        raise ExpressionError("a list comprehension may only iterate over a literal list or tuple")
    name = generator.target.id
    return [_evaluate(node.elt, {name: item}) for item in _evaluate(generator.iter, {})]
