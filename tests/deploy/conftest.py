"""Paths of the deployment files, and the linters that check them (installed by the dev extra)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
K8S = REPO / "deploy" / "k8s"


def find_tool(name: str) -> str:
    """The executable ``name`` of this environment (beside python) or on PATH; skip without it."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (`pip install -e .[dev]` installs it)")
    return found


def read_pyproject() -> dict[str, Any]:
    """pyproject.toml, parsed (tomllib: Python >= 3.11, as in the images)."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def requirements_script() -> Any:
    """docker/pyproject_requirements.py as a module."""
    pytest.importorskip("tomllib", reason="the script needs Python >= 3.11, as in the images")
    path = DOCKER / "pyproject_requirements.py"
    spec = importlib.util.spec_from_file_location("pyproject_requirements", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
