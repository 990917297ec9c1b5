"""The whitelist evaluator behind the official configs' ``!!python/object/apply:eval`` tags."""

from __future__ import annotations

import pytest

from dyhead_serve.config.errors import ConfigError
from dyhead_serve.config.safe_eval import MAX_EXPRESSION_CHARS, ExpressionError, safe_eval


def test_atss_expression() -> None:
    assert safe_eval("[[x*2,] for x in [32, 64, 128, 256, 512 ]]") == [[64], [128], [256], [512], [1024]]


def test_retinanet_expression_matches_python_arithmetic() -> None:
    expression = "[[x, x * 2**(1.0/3), x * 2**(2.0/3) ] for x in [32, 64, 128, 256, 512 ]]"
    expected = [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]]
    assert safe_eval(expression) == expected
    assert safe_eval(expression)[0][1] == pytest.approx(40.3174736, abs=1e-7)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1", 1),
        ("-2.5", -2.5),
        ("+3", 3),
        ("(1, 2.0)", (1, 2.0)),
        ("[1, [2, 3]]", [1, [2, 3]]),
        ("7 / 2", 3.5),
        ("2 ** 10 - 24 + 1 * 3", 1003),
        ("2 ** -1", 0.5),
        ("[x + 1 for x in (1, 2)]", [2, 3]),
        ("[]", []),
    ],
)
def test_whitelisted_expressions(expression: str, expected: object) -> None:
    result = safe_eval(expression)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("__import__('os').system('echo pwned')", "calls are not allowed"),
        ("os.system", "attribute access"),
        ("open", "name 'open' is not allowed"),
        ("'abc'", "only numeric literals"),
        ("True", "only numeric literals"),
        ("[1][0]", "Subscript"),
        ("(lambda: 1)", "Lambda"),
        ("[0] * 1000000000", "needs two numbers"),
        ("[1] + [2]", "needs two numbers"),
        ("10 ** 10 ** 10", "exceeds 64 bits"),
        ("2 ** 64", "exceeds 64 bits"),
        ("10.0 ** 400", "overflow"),
        ("(-8) ** 0.5", "not a real number"),
        ("1 / 0", "division by zero"),
        ("7 // 2", "FloorDiv"),
        ("[[y for y in [1]] for x in [1]]", "nested list comprehensions"),
        ("[x for x in [1] if x]", "'if' clauses"),
        ("[x for x in [1] for y in [2]]", "only one 'for' clause"),
        ("[x for x in range(3)]", "literal list or tuple"),
        ("[x for (x, y) in [(1, 2)]]", "single name"),
        ("[*[1, 2]]", "starred"),
        ("{1: 2}", "Dict"),
        ("[1, 2", "not a valid Python expression"),
        ("x = 1", "not a valid Python expression"),
    ],
)
def test_rejected_expressions(expression: str, reason: str) -> None:
    with pytest.raises(ExpressionError, match=reason.replace("(", r"\(")):
        safe_eval(expression)


def test_rejects_overlong_expression() -> None:
    with pytest.raises(ExpressionError, match="characters long"):
        safe_eval("[" + "1," * MAX_EXPRESSION_CHARS + "]")


def test_expression_error_is_a_config_error() -> None:
    assert issubclass(ExpressionError, ConfigError)
