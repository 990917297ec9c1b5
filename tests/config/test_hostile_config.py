"""Config files written to hang, exhaust or crash the reader: each ends at once with a
ConfigError naming the file (and, through the CLI, one ``error:`` line and exit status 2)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dyhead_serve.cli import main as cli_main
from dyhead_serve.config import ConfigError, load_config
from dyhead_serve.config.file_limits import (
    MAX_BASE_DEPTH,
    MAX_CONFIG_BYTES,
    MAX_NESTING_DEPTH,
    check_tree,
    read_config_text,
)


@contextmanager
def finishes_within(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging the suite) when the block runs longer than ``seconds``."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def billion_laughs() -> str:
    """Nine levels of nine aliases each: a few hundred bytes that expand to 9**9 strings."""
    lines = ['  L0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 10):
        aliases = ", ".join([f"*l{level - 1}"] * 9)
        lines.append(f"  L{level}: &l{level} [{aliases}]")
    return "MODEL:\n" + "\n".join(lines) + "\n"


# (id, file text, what the message says)
HOSTILE_FILES = [
    ("recursive-alias-mapping", "MODEL: &m {ANCHOR_GENERATOR: *m}\n", "contains itself"),
    ("recursive-alias-list", "MODEL:\n  ANCHOR_GENERATOR:\n    SIZES: &r [*r]\n", "contains itself"),
    ("billion-laughs", billion_laughs(), "expands to more than"),
    ("deep-nesting", "MODEL:\n  PIXEL_STD: " + "[" * 40 + "]" * 40 + "\n", "more than 32 levels"),
    ("very-deep-nesting", "SEED: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("nul-character", 'MODEL:\n  META_ARCHITECTURE: "a\0b"\n', "NUL character"),
    ("not-utf8", b"MODEL:\n  META_ARCHITECTURE: \xff\xfe\n", "not UTF-8"),
    ("base-proc-file", "_BASE_: /proc/self/environ\n", "must be a .yaml or .yml file"),
    ("base-not-a-string", "_BASE_: [3]\n", "must name a file"),
    ("base-empty-list", "_BASE_: []\n", "must be a file name or a list"),
    ("base-directory", "_BASE_: sub.yaml\n", "is not a regular file"),
]


@pytest.mark.parametrize(
    ("text", "message"), [h[1:] for h in HOSTILE_FILES], ids=[h[0] for h in HOSTILE_FILES]
)
def test_hostile_config_file_fails_promptly(tmp_path: Path, text: str | bytes, message: str) -> None:
    (tmp_path / "sub.yaml").mkdir()
    path = write(tmp_path / "bad.yaml", text)
    with finishes_within(10), pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert "bad.yaml" in str(info.value) or "sub.yaml" in str(info.value)


def test_billion_laughs_is_small(tmp_path: Path) -> None:
    assert len(billion_laughs()) < 1500  # a 1.4 KB document that expands exponentially


def test_base_symlink_to_a_special_file(tmp_path: Path) -> None:
    os.symlink("/proc/self/environ", tmp_path / "env.yaml")
    with finishes_within(10), pytest.raises(ConfigError, match="NUL character"):
        load_config(write(tmp_path / "a.yaml", "_BASE_: env.yaml\n"))
    os.symlink("/dev/zero", tmp_path / "zero.yaml")
    with finishes_within(10), pytest.raises(ConfigError, match="not a regular file"):
        load_config(write(tmp_path / "b.yaml", "_BASE_: zero.yaml\n"))


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with finishes_within(10), pytest.raises(ConfigError, match="not a regular file"):
        load_config(write(tmp_path / "a.yaml", "_BASE_: pipe.yaml\n"))
    with finishes_within(10), pytest.raises(ConfigError, match="not a regular file"):
        load_config(fifo)
    with finishes_within(10), pytest.raises(ConfigError, match="not a regular file"):
        read_config_text(fifo)


def test_a_directory_is_refused_by_the_shared_reader(tmp_path: Path) -> None:
    # os.fdopen refuses a directory with IsADirectoryError: the check must come first.
    with pytest.raises(ConfigError, match="not a regular file"):
        read_config_text(tmp_path)


def test_oversized_file(tmp_path: Path) -> None:
    path = write(tmp_path / "big.yaml", "SEED: 1\n" + "#" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ConfigError, match="larger than 1024 KiB"):
        load_config(path)


def test_long_chain_of_bases(tmp_path: Path) -> None:
    for index in range(MAX_BASE_DEPTH + 2):
        write(tmp_path / f"c{index}.yaml", f"_BASE_: c{index + 1}.yaml\n")
    write(tmp_path / f"c{MAX_BASE_DEPTH + 2}.yaml", "SEED: 1\n")
    with pytest.raises(ConfigError, match=f"more than {MAX_BASE_DEPTH} nested base files"):
        load_config(tmp_path / "c0.yaml")
    assert load_config(tmp_path / f"c{MAX_BASE_DEPTH // 2}.yaml").SEED == 1  # a shorter chain is fine


def test_shared_aliases_within_limits_still_work(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ok.yaml",
        "MODEL:\n  PIXEL_MEAN: &m [1.0, 2.0, 3.0]\n  PIXEL_STD: *m\n",
    )
    cfg = load_config(path)
    assert cfg.MODEL.PIXEL_STD == cfg.MODEL.PIXEL_MEAN == [1.0, 2.0, 3.0]


def test_check_tree_counts_shared_nodes_as_often_as_used() -> None:
    leaf: list = []
    shared = [leaf, leaf]
    check_tree([shared, shared], lambda node: node, source="x", max_nodes=7)  # 1 + 2 * (1 + 2)
    with pytest.raises(ConfigError, match="more than 6 values"):
        check_tree([shared, shared], lambda node: node, source="x", max_nodes=6)
    deep: list = []
    for _ in range(MAX_NESTING_DEPTH):
        deep = [deep]
    with pytest.raises(ConfigError, match="levels deep"):
        check_tree(deep, lambda node: node, source="x")
    # depth through a shared node that was measured at a shallower place
    short = [[[]]]
    with pytest.raises(ConfigError, match="levels deep"):
        check_tree([short, [[short]]], lambda node: node, source="x", max_depth=5)


@pytest.mark.parametrize("name", ["recursive-alias-mapping", "nul-character", "base-proc-file"])
def test_cli_answers_error_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    text = next(h[1] for h in HOSTILE_FILES if h[0] == name)
    path = write(tmp_path / "bad.yaml", text)
    with finishes_within(30):
        code = cli_main(["predict", "--config", str(path), "--weights", str(tmp_path / "w.pth"), "x.png"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ("PIXEL_STD: [0.0, 0.0, 0.0]", "MODEL.PIXEL_STD"),
        ("PIXEL_STD: [.nan, 57.0, 57.0]", "MODEL.PIXEL_STD"),
        ("PIXEL_STD: [-1.0, 57.0, 57.0]", "MODEL.PIXEL_STD"),
        ("PIXEL_MEAN: [.inf, 116.0, 123.0]", "MODEL.PIXEL_MEAN"),
    ],
    ids=["std-zero", "std-nan", "std-negative", "mean-inf"],
)
def test_degenerate_normalisation_is_refused_at_load(tmp_path, capsys, values, key):
    config = tmp_path / "bad.yaml"
    config.write_text(f"MODEL:\n  {values}\n")
    with pytest.raises(ConfigError, match=rf"{key} must be finite"):
        load_config(config)
    # Through the CLI (before this check, predict crashed in torchvision's kernel: signal 11).
    assert cli_main(["-q", "predict", "--config", str(config), "--weights", "w.pth", "missing.jpg"]) == 2
    assert f"{key} must be finite" in capsys.readouterr().err
