"""The one safe arithmetic evaluator of the config readers, and the YAML expressions it serves.

Both config readers interpret arithmetic through :func:`binary_operation` and
:func:`unary_operation`, with the same bounds, so that no config can make the reader compute or
allocate something large (a few hundred bytes of ``a1 = a0 * a0`` lines would otherwise square a
number thirty times):

- every integer operand and every integer result has a magnitude below ``2**64``
  (:data:`MAX_INT_BITS`); ``**`` on integers is refused before it is computed when its result
  would be larger, and every other operation on such operands costs next to nothing, so its result
  is checked after;
- float results must be finite, and a complex result is refused;
- strings, lists and tuples (where a reader allows them: mmdetection configs, not YAML
  expressions) join with ``+`` and lists and tuples repeat with ``*`` by an integer count up to
  :data:`MAX_SEQUENCE` elements; strings never repeat, and nothing repeats by a float.

A refusal is an :class:`ExpressionError` (a :class:`~dyhead_serve.config.ConfigError`); each
reader adds the file, line and key.

The official DyHead YAML files compute their anchor sizes with Python expressions such as
``[[x, x * 2**(1.0/3), x * 2**(2.0/3)] for x in [32, 64, 128, 256, 512]]``. Detectron2 runs
them with ``eval``; :func:`safe_eval` parses them with :mod:`ast` and interprets a small
whitelist instead, so a config file can never run code:

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

__all__ = [
    "MAX_EXPRESSION_CHARS",
    "MAX_INT_BITS",
    "MAX_SEQUENCE",
    "ExpressionError",
    "binary_operation",
    "safe_eval",
    "unary_operation",
]

MAX_EXPRESSION_CHARS = 1000
# Every integer operand and result stays below 2**64 in magnitude, so that no operator (``*``
# chains as well as ``**``) can make the interpreter compute or allocate a gigantic number.
MAX_INT_BITS = 64
# The longest string, list or tuple that ``+`` or ``*`` may build.
MAX_SEQUENCE = 100_000

_SYMBOLS: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
}
# What a YAML expression may use.
_EXPRESSION_OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)


class ExpressionError(ConfigError):
    """An expression outside the whitelist of :func:`safe_eval`, or one that fails to evaluate."""


def binary_operation(op: ast.operator, left: Any, right: Any, *, sequences: bool = False) -> Any:
    """``left <op> right`` within the bounds of the module docstring.

    Args:
        op: the operator node (``ast.Add()``, ...): ``+ - * / // % **``.
        left, right: numbers (``int`` or ``float``, not ``bool``) or, with ``sequences``,
            strings, lists and tuples.
        sequences: allow ``+`` of two strings, lists or tuples, and ``*`` of a list or tuple by
            an integer count.

    Raises:
        ExpressionError: another operator or operand type, a result out of bounds, a division
            by zero, an overflow or a complex result; the message shows the operation.
    """
    symbol = _SYMBOLS.get(type(op))
    name = type(op).__name__
    if symbol is None:
        raise ExpressionError(f"operator {name} is not allowed")
    if _is_number(left) and _is_number(right):
        return _number_operation(symbol, left, right)
    if sequences:
        if symbol == "+" and type(left) is type(right) and isinstance(left, str | list | tuple):
            if len(left) + len(right) > MAX_SEQUENCE:
                raise ExpressionError(f"{name} builds a value longer than {MAX_SEQUENCE} elements")
            return left + right
        if symbol == "*" and isinstance(left, list | tuple) and _is_number(right):
            if type(right) is not int or not 0 <= len(left) * right <= MAX_SEQUENCE:
                raise ExpressionError(
                    f"a repeated sequence must have an integer count and at most {MAX_SEQUENCE} elements"
                )
            return left * right
        raise ExpressionError(
            f"{name} of {type(left).__name__} and {type(right).__name__} is not allowed: operator {symbol} "
            "takes two numbers, or (+) two strings, lists or tuples, or (*) a list or tuple and a count"
        )
    raise ExpressionError(
        f"{name} of {type(left).__name__} and {type(right).__name__} is not allowed: operator {symbol} "
        "needs two numbers"
    )


def unary_operation(op: ast.unaryop, operand: Any) -> int | float:
    """``+operand`` or ``-operand`` of a number, within the bounds of the module docstring.

    Raises:
        ExpressionError: another operator (``not``, ``~``) or an operand that is not a number.
    """
    if not isinstance(op, ast.UAdd | ast.USub):
        raise ExpressionError(f"unary operator {type(op).__name__} is not allowed")
    if not _is_number(operand):
        raise ExpressionError(f"unary + and - apply to numbers only, got {type(operand).__name__}")
    return operand if isinstance(op, ast.UAdd) else -operand


def _number_operation(symbol: str, left: int | float, right: int | float) -> int | float:
    shown = f"{left!r} {symbol} {right!r}"
    for operand in (left, right):
        if type(operand) is int and operand.bit_length() > MAX_INT_BITS:
            raise ExpressionError(f"integer operand of {shown} exceeds {MAX_INT_BITS} bits")
    power = symbol == "**" and isinstance(left, int) and isinstance(right, int) and right >= 0
    # |left| >= 2**(bits - 1): a power is known too large before it is computed. Any other
    # operation on two operands within the bound is cheap, and its result is checked after.
    if power and (abs(int(left)).bit_length() - 1) * int(right) > MAX_INT_BITS:
        raise ExpressionError(f"integer power out of range: {shown} exceeds {MAX_INT_BITS} bits")
    try:
        if symbol == "+":
            result = left + right
        elif symbol == "-":
            result = left - right
        elif symbol == "*":
            result = left * right
        elif symbol == "/":
            result = left / right
        elif symbol == "//":
            result = left // right
        elif symbol == "%":
            result = left % right
        else:
            result = left**right
    except ZeroDivisionError:
        raise ExpressionError(f"arithmetic fails: division by zero in {shown}") from None
    except OverflowError:
        raise ExpressionError(f"arithmetic fails: numeric overflow in {shown}") from None
    if type(result) is int and result.bit_length() > MAX_INT_BITS:
        what = "integer power out of range" if power else "integer result too large"
        raise ExpressionError(f"{what}: {shown} exceeds {MAX_INT_BITS} bits")
    return _checked_number(result)


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
        if value.bit_length() > MAX_INT_BITS:
            raise ExpressionError(f"integer result exceeds {MAX_INT_BITS} bits")
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
    return unary_operation(node.op, _evaluate(node.operand, env))


def _evaluate_binary(node: ast.BinOp, env: Mapping[str, Any]) -> int | float:
    if not isinstance(node.op, _EXPRESSION_OPERATORS):
        raise ExpressionError(f"operator {type(node.op).__name__} is not allowed; use one of + - * / **")
    result: int | float = binary_operation(node.op, _evaluate(node.left, env), _evaluate(node.right, env))
    return result


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
