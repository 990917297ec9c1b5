"""The installed layout: ``export/`` and ``plugins/`` install as ``dyhead_serve.export`` and
``dyhead_serve.plugins``, and pyproject's package list names every package folder."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

REPO = Path(__file__).resolve().parents[1]


def _setuptools_table() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def _installed_name(folder: Path, package_dir: dict[str, str]) -> str:
    relative = folder.relative_to(REPO).as_posix()
    for name, source in package_dir.items():
        if relative == source or relative.startswith(source + "/"):
            return name + relative[len(source) :].replace("/", ".")
    return relative.replace("/", ".")


def test_every_package_folder_is_installed_under_the_project_namespace():
    table = _setuptools_table()
    package_dir = table["package-dir"]
    folders = sorted(
        init.parent
        for root in ("dyhead_serve", "export", "plugins")
        for init in (REPO / root).rglob("__init__.py")
    )
    expected = sorted(_installed_name(folder, package_dir) for folder in folders)
    assert sorted(table["packages"]) == expected
    assert {name.split(".")[0] for name in table["packages"]} == {"dyhead_serve"}


def test_console_scripts_point_into_the_namespace():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {
        "dyhead-serve": "dyhead_serve.cli:main",
        "dyhead-export": "dyhead_serve.cli.export:main",
    }


def test_installed_modules_come_from_the_repository_folders():
    import dyhead_serve.export
    import dyhead_serve.plugins

    assert Path(dyhead_serve.export.__file__).parent in (REPO / "export", _site_copy("export"))
    assert Path(dyhead_serve.plugins.__file__).parent in (REPO / "plugins", _site_copy("plugins"))


def _site_copy(name: str) -> Path:
    import dyhead_serve

    return Path(dyhead_serve.__file__).parent / name
