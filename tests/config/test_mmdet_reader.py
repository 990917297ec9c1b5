"""The mmdetection config reader: the whitelist, mmengine's inheritance rules, hostile files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dyhead_serve.config import ConfigError
from dyhead_serve.config.file_limits import MAX_BASE_DEPTH, MAX_CONFIG_BYTES
from dyhead_serve.config.mmdet.reader import merge_into, read_mmdet_config


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_literals_dicts_names_and_arithmetic(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.py",
        '"""a docstring"""\n'
        "root = 'data/'\n"
        "size = (1333, 800)\n"
        "a = b = -2\n"
        "model = dict(type='ATSS', scale=size, ann=root + 'x.json', lr=0.01 * 2, n=2 ** 3,\n"
        "             m={'k': [1, 2.5, None, True]}, first=size[0], path=f'{root}val', rep=[0] * 3)\n",
    )
    cfg = read_mmdet_config(path)
    assert cfg["model"] == {
        "type": "ATSS", "scale": (1333, 800), "ann": "data/x.json", "lr": 0.02, "n": 8,
        "m": {"k": [1, 2.5, None, True]}, "first": 1333, "path": "data/val", "rep": [0, 0, 0],
    }  # fmt: skip
    assert cfg["a"] == cfg["b"] == -2 and cfg["root"] == "data/"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("import os\n", "import is not allowed"),
        ("x = __import__('os')\n", "calling '__import__' is not allowed"),
        ("x = open('/etc/passwd').read()\n", "is not allowed"),
        ("x = [i for i in range(3)]\n", "a list comprehension"),
        ("x = lambda: 1\n", "a lambda"),
        ("def f():\n    pass\n", "a function definition"),
        ("if True:\n    x = 1\n", "an if statement"),
        ("x = y\n", "name 'y' is not defined"),
        ("x = dict(1, 2)\n", "keyword arguments only"),
        ("x = os.path\n", "attribute access is allowed on _base_ only"),
        ("x = 'a' * 10\n", "Mult of str and int"),
        ("x = [0] * 10**9\n", "at most 100000 elements"),
        ("x = 10 ** 400\n", "integer power out of range"),
        ("x = 1 / 0\n", "arithmetic fails"),
        ("x.y = 1\n", "only plain names can be assigned"),
        ("x = b'bytes'\n", "a bytes literal is not allowed"),
        ("with read_base():\n    from .base import *\n", "new-style lazy-import configs"),
        ("x = {{ fileDirname }}\n", "only {{_base_.name}} substitutions are supported"),
        ("x = (\n", "not valid Python"),
    ],
)
def test_anything_outside_the_whitelist_is_refused_with_its_line(
    tmp_path: Path, source: str, message: str
) -> None:
    path = write(tmp_path / "bad.py", "ok = 1\n" + source)
    with pytest.raises(ConfigError, match=message) as info:
        read_mmdet_config(path)
    assert str(path) in str(info.value)


def test_base_inheritance_follows_mmengine(tmp_path: Path) -> None:
    write(
        tmp_path / "_base_" / "model.py",
        "model = dict(type='ATSS', backbone=dict(depth=50, style='pytorch'), neck=[1, 2],\n"
        "             head=dict(a=1, b=2))\n"
        "backend_args = None\n",
    )
    write(
        tmp_path / "_base_" / "data.py",
        "data_root = 'data/coco/'\ntest_pipeline = [dict(type='LoadImageFromFile')]\n",
    )
    path = write(
        tmp_path / "configs" / "child.py",
        "_base_ = ['../_base_/model.py', '../_base_/data.py']\n"
        "model = dict(backbone=dict(style='caffe'), neck=[3], head=dict(_delete_=True, c=3),\n"
        "             new=dict(_delete_=True, x=1))\n"
        "test_pipeline = [dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),\n"
        "                 dict(type='Resize', root={{ _base_.data_root }},\n"
        "                      n={{_base_.model.backbone.depth}})]\n"
        "depth = _base_.model.backbone.depth\n",
    )
    cfg = read_mmdet_config(path)
    # dicts merge key by key, lists and _delete_ dicts replace, the base's other keys stay
    assert cfg["model"] == {
        "type": "ATSS", "backbone": {"depth": 50, "style": "caffe"}, "neck": [3], "head": {"c": 3},
        "new": {"x": 1},
    }  # fmt: skip
    assert cfg["test_pipeline"] == [
        {"type": "LoadImageFromFile", "backend_args": None},
        {"type": "Resize", "root": "data/coco/", "n": 50},
    ]
    assert cfg["depth"] == 50 and cfg["data_root"] == "data/coco/" and cfg["backend_args"] is None


def test_base_errors(tmp_path: Path) -> None:
    write(tmp_path / "a.py", "x = 1\n")
    write(tmp_path / "b.py", "x = 2\n")
    with pytest.raises(ConfigError, match=r"keys \['x'\] are set by more than one _base_ file"):
        read_mmdet_config(write(tmp_path / "dup.py", "_base_ = ['a.py', 'b.py']\n"))
    with pytest.raises(ConfigError, match="inheritance loops back on itself"):
        read_mmdet_config(write(tmp_path / "loop.py", "_base_ = 'loop.py'\n"))
    write(tmp_path / "ping.py", "_base_ = 'pong.py'\n")
    with pytest.raises(ConfigError, match="loops back"):
        read_mmdet_config(write(tmp_path / "pong.py", "_base_ = 'ping.py'\n"))
    with pytest.raises(ConfigError, match=r"_base_ file '.*nowhere\.py' of '.*missing\.py' does not exist"):
        read_mmdet_config(write(tmp_path / "missing.py", "_base_ = 'nowhere.py'\n"))
    with pytest.raises(ConfigError, match="remote base configs are not supported"):
        read_mmdet_config(write(tmp_path / "remote.py", "_base_ = 'https://example.org/base.py'\n"))
    with pytest.raises(ConfigError, match="inside an installed package"):
        read_mmdet_config(write(tmp_path / "scope.py", "_base_ = 'mmdet::_base_/x.py'\n"))
    with pytest.raises(ConfigError, match=r"_base_\.nothing is not set"):
        read_mmdet_config(write(tmp_path / "ref.py", "_base_ = 'a.py'\ny = {{_base_.nothing}}\n"))
    with pytest.raises(ConfigError, match="is a dict here but a int in the base"):
        read_mmdet_config(write(tmp_path / "type.py", "_base_ = 'a.py'\nx = dict(y=1)\n"))
    with pytest.raises(ConfigError, match=r"\.py files only"):
        read_mmdet_config(write(tmp_path / "c.yaml", "x: 1\n"))


def test_deep_inheritance_is_cut_off(tmp_path: Path) -> None:
    write(tmp_path / "f0.py", "x = 0\n")
    for i in range(1, MAX_BASE_DEPTH + 1):
        write(tmp_path / f"f{i}.py", f"_base_ = 'f{i - 1}.py'\n")
    assert read_mmdet_config(tmp_path / f"f{MAX_BASE_DEPTH - 1}.py") == {"x": 0}  # 16 files in all
    with pytest.raises(ConfigError, match=f"more than {MAX_BASE_DEPTH} nested base files"):
        read_mmdet_config(tmp_path / f"f{MAX_BASE_DEPTH}.py")


def test_hostile_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NUL character"):
        read_mmdet_config(write(tmp_path / "nul.py", "x = 1\x00\n"))
    big = tmp_path / "big.py"
    big.write_text("x = 1\n" + "#" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError, match="larger than 1024 KiB"):
        read_mmdet_config(big)
    (tmp_path / "folder.py").mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        read_mmdet_config(tmp_path / "folder.py")
    with pytest.raises(ConfigError, match="refusing a path under /proc"):
        read_mmdet_config(Path("/proc/self/environ.py"))
    link = tmp_path / "link.py"
    link.symlink_to("/proc/self/environ")
    with pytest.raises(ConfigError, match="refusing a path under /proc"):
        read_mmdet_config(link)
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo.py"
        os.mkfifo(fifo)
        with pytest.raises(ConfigError, match="not a regular file"):
            read_mmdet_config(fifo)  # would block forever if opened
    (tmp_path / "bin.py").write_bytes(b"x = '\xff'\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_mmdet_config(tmp_path / "bin.py")


def test_deep_nesting_and_exponential_sharing_are_refused(tmp_path: Path) -> None:
    deep = "x = " + "[" * 80 + "]" * 80 + "\n"
    with pytest.raises(ConfigError, match=r"nested"):
        read_mmdet_config(write(tmp_path / "deep.py", deep))
    chain = "a0 = [1]\n" + "".join(f"a{i} = [a{i - 1}]\n" for i in range(1, 100))
    with pytest.raises(ConfigError, match="nests values more than 32 levels deep"):
        read_mmdet_config(write(tmp_path / "chain.py", chain))
    # each line doubles the logical size through shared names: 2**40 values, 40 lines
    doubling = "a0 = [1, 2]\n" + "".join(f"a{i} = [a{i - 1}, a{i - 1}]\n" for i in range(1, 40))
    with pytest.raises(ConfigError, match="expands to more than 100000 values"):
        read_mmdet_config(write(tmp_path / "doubling.py", doubling))
    growth = "a = 'x'\n" + "".join("a = a + a\n" for _ in range(30))
    with pytest.raises(ConfigError, match="longer than"):
        read_mmdet_config(write(tmp_path / "growth.py", growth))


def test_merge_into_does_not_change_its_inputs() -> None:
    base = {"m": {"a": 1, "b": {"c": 2}}, "l": [1]}
    child = {"m": {"b": {"_delete_": True, "d": 3}}, "l": [2]}
    assert merge_into(child, base) == {"m": {"a": 1, "b": {"d": 3}}, "l": [2]}
    assert base == {"m": {"a": 1, "b": {"c": 2}}, "l": [1]}
    assert child == {"m": {"b": {"_delete_": True, "d": 3}}, "l": [2]}
