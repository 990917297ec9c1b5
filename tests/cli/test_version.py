"""``--version`` of both console scripts: the installed distribution's version."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

import dyhead_serve
from dyhead_serve.cli import version as version_module
from dyhead_serve.cli.export import build_parser as build_export_parser
from dyhead_serve.cli.main import build_parser

PARSERS = [(build_parser, "dyhead-serve"), (build_export_parser, "dyhead-export")]


@pytest.mark.parametrize(("build", "prog"), PARSERS)
def test_version_prints_the_installed_version(build, prog, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"{prog} {metadata.version('dyhead-serve')}\n"


def test_version_falls_back_to_the_package_attribute(monkeypatch):
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(version_module.metadata, "version", not_installed)
    assert version_module.package_version() == dyhead_serve.__version__


def test_console_script_version():
    out = subprocess.run(
        [sys.executable, "-m", "dyhead_serve.cli", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.split()[-1] == metadata.version("dyhead-serve")
