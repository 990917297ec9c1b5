"""The one bounded arithmetic of both config readers: no integer beyond 2**64 at any step, no
sequence beyond MAX_SEQUENCE, refused with a ConfigError that names the file and line."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest

from dyhead_serve.config import ConfigError, load_config
from dyhead_serve.config.mmdet.reader import read_mmdet_config
from dyhead_serve.config.safe_eval import (
    MAX_INT_BITS,
    MAX_SEQUENCE,
    ExpressionError,
    binary_operation,
    safe_eval,
)

# 4294967295 squared fits 64 bits; squared again it does not. Unbounded, 23 such lines took 94 s
# and 26 did not finish in 300 s (each line doubles the number's size).
SQUARING = "a0 = 4294967295\n" + "".join(f"a{n} = a{n - 1} * a{n - 1}\n" for n in range(1, 31))


def read_in_child(path: Path, reader: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run a config reader on ``path`` in a child process, killed after ``timeout`` seconds, so
    that an unbounded computation fails this test instead of hanging the suite. It prints the
    ConfigError's message, or "read" when the file was accepted."""
    code = textwrap.dedent(f"""
        import sys
        from dyhead_serve.config import ConfigError
        from {reader.rsplit(".", 1)[0]} import {reader.rsplit(".", 1)[1]} as read
        try:
            read(sys.argv[1])
        except ConfigError as exc:
            print(exc)
        else:
            print("read")
        """)
    try:
        command = [sys.executable, "-c", code, str(path)]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{reader} on {path.name} still computing after {timeout} s")


def test_mmdet_config_squaring_a_number_is_refused_at_the_first_overflow(tmp_path: Path) -> None:
    path = tmp_path / "squares.py"
    path.write_text(SQUARING)
    message = read_in_child(path, "dyhead_serve.config.mmdet.reader.read_mmdet_config").stdout.strip()
    assert message.startswith(f"{path}:3: integer result too large: 18446744065119617025 * ")
    assert message.endswith(f"exceeds {MAX_INT_BITS} bits")
    with pytest.raises(ConfigError, match=r"squares\.py:3: integer result too large"):
        read_mmdet_config(path)


def test_yaml_expression_multiplying_a_number_up_is_refused(tmp_path: Path) -> None:
    product = " * ".join(["4294967295"] * 31)
    path = tmp_path / "squares.yaml"
    path.write_text(f'MODEL:\n  ANCHOR_GENERATOR:\n    SIZES: !!python/object/apply:eval ["[[{product}]]"]\n')
    message = read_in_child(path, "dyhead_serve.config.load_config").stdout.strip()
    assert "config key 'MODEL.ANCHOR_GENERATOR.SIZES'" in message and f"{path}:3" in message
    refusal = f"integer result too large: 18446744065119617025 * 4294967295 exceeds {MAX_INT_BITS} bits"
    assert refusal in message
    with pytest.raises(ConfigError, match="integer result too large"):
        load_config(path)


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        # operands beyond the bound (a literal may be large; arithmetic on it may not)
        ("a = 123456789012345678901234567890\nb = a * 1\n", "integer operand of .* exceeds 64 bits"),
        ("a = 123456789012345678901234567890\nb = a % 7\n", "integer operand"),
        ("a = 2 ** 63\nb = a + a\n", "integer result too large"),
        ("a = 2 ** 63\nb = a - a - a - a\n", "integer result too large"),
        ("a = 4294967296\nb = a * a\n", "integer result too large"),
        ("a = 3 ** 41\n", "integer power out of range"),
        ("a = [0] * 2.5\n", "integer count"),
        ("a = 'ab' * 3\n", "Mult of str and int"),
        ("a = 1e308 * 10\n", "not a finite number"),
    ],
)
def test_mmdet_arithmetic_refusals_name_the_line(tmp_path: Path, source: str, reason: str) -> None:
    path = tmp_path / "cfg.py"
    path.write_text(source)
    line = source.count("\n")
    with pytest.raises(ConfigError, match=rf"cfg\.py:{line}: .*{reason}"):
        read_mmdet_config(path)


def test_mmdet_arithmetic_within_the_bounds_is_python_arithmetic(tmp_path: Path) -> None:
    path = tmp_path / "cfg.py"
    path.write_text(
        "a = 4294967295 * 4294967295\nb = 1 - 2 ** 63 - 2 ** 63\nc = 7 // 2\nd = -7 % 3\ne = 2 ** -1\n"
        "f = [1, 2] * 3\ng = 'x' + 'y'\n"
    )
    assert read_mmdet_config(path) == {
        "a": 4294967295 * 4294967295,
        "b": -(2**64) + 1,
        "c": 3,
        "d": 2,
        "e": 0.5,
        "f": [1, 2, 1, 2, 1, 2],
        "g": "xy",
    }


def test_fstring_of_a_long_string_many_times_is_refused_before_it_is_joined(tmp_path: Path) -> None:
    """A 100 000-character string named 2 000 times in one f-string would join 200 MB."""
    doubling = "a = 'x'\n" + "a = a + a\n" * 16  # 65 536 characters, within the bound
    path = tmp_path / "fstring.py"
    path.write_text(doubling + "b = f'" + "{a}" * 2000 + "'\n")
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match=rf"fstring\.py:18: a string longer than {MAX_SEQUENCE}"):
            read_mmdet_config(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20  # nothing near the 131 MB the joined string would take


@pytest.mark.parametrize(
    ("left", "op", "right"),
    [
        (2**64, ast.Add(), 0),
        (0, ast.Mult(), -(2**64)),
        (2**63, ast.Mult(), 2),
        (2, ast.Pow(), 64),
        (2**64, ast.FloorDiv(), 1),
    ],
)
def test_every_integer_operation_is_bounded(left: int, op: ast.operator, right: int) -> None:
    with pytest.raises(ExpressionError, match=f"exceeds {MAX_INT_BITS} bits"):
        binary_operation(op, left, right)


def test_both_readers_share_the_bounds() -> None:
    assert safe_eval("4294967295 * 4294967295") == 18446744065119617025
    with pytest.raises(ExpressionError, match="integer result too large"):
        safe_eval("4294967295 * 4294967295 * 2")
    with pytest.raises(ExpressionError, match="needs two numbers"):
        binary_operation(ast.Add(), [1], [2])  # sequences only where a reader allows them
    assert binary_operation(ast.Add(), [1], [2], sequences=True) == [1, 2]
