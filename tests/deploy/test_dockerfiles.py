"""The Dockerfiles, checked without a Docker daemon: hadolint, every file they copy is in the
build context, dependencies come before the source, a non-root user, the health check and the
command agree with the CLI and the server's routes."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

from dyhead_serve.cli import build_parser
from dyhead_serve.server.settings import ServerSettings
from tests.deploy.conftest import DOCKER, REPO, find_tool, read_pyproject, requirements_script
from tests.deploy.dockerfile import (
    Instruction,
    copy_sources,
    dockerignore_excludes,
    exec_form,
    parse_dockerfile,
)

GPU = DOCKER / "Dockerfile"
CPU = DOCKER / "Dockerfile.cpu"
DOCKERFILES = pytest.mark.parametrize("dockerfile", [GPU, CPU], ids=["gpu", "cpu"])
# Variables the images set that are not server settings: the zoo's cache and the entrypoint's.
OTHER_VARIABLES = {"DYHEAD_SERVE_CACHE", "DYHEAD_ENGINE_PRECISION", "DYHEAD_ENGINE_PROFILE"}


def _instructions(path: Path, keyword: str) -> list[Instruction]:
    return [i for i in parse_dockerfile(path) if i.keyword == keyword]


def _env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in _instructions(path, "ENV"):
        for word in shlex.split(instruction.args):
            key, _, value = word.partition("=")
            env[key] = value
    return env


@DOCKERFILES
def test_hadolint_finds_nothing(dockerfile):
    hadolint = find_tool("hadolint")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style",
         "--trusted-registry", "nvcr.io", "--trusted-registry", "docker.io", str(dockerfile)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@DOCKERFILES
def test_every_copied_file_exists_and_is_in_the_build_context(dockerfile):
    copies = _instructions(dockerfile, "COPY")
    assert copies
    for instruction in copies:
        sources, _ = copy_sources(instruction)
        for source in sources:
            path = REPO / source
            where = f"{dockerfile.name}:{instruction.line}"
            assert path.exists(), f"{where} copies {source}, which does not exist"
            files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
            ignore = REPO / ".dockerignore"
            kept = [f for f in files if not dockerignore_excludes(ignore, str(f.relative_to(REPO)))]
            assert kept, f"{where}: .dockerignore leaves {source} out of the build context"
            if path.is_dir():
                assert (path / "__init__.py") in kept


def test_dockerignore_keeps_the_package_data_and_drops_the_rest():
    ignore = REPO / ".dockerignore"
    for kept in ("pyproject.toml", "dyhead_serve/server/static/demo.html", "dyhead_serve/config/official"):
        assert not dockerignore_excludes(ignore, kept), kept
    dropped_paths = (".git/config", ".venv/bin/python", "tests/conftest.py", "dyhead_serve/__pycache__/a.pyc")
    for dropped in dropped_paths:
        assert dockerignore_excludes(ignore, dropped), dropped


@DOCKERFILES
def test_dependencies_are_installed_before_the_source_is_copied(dockerfile):
    instructions = parse_dockerfile(dockerfile)
    source_copy = next(
        n for n, i in enumerate(instructions) if i.keyword == "COPY" and "dyhead_serve" in copy_sources(i)[0]
    )
    requirements_install = next(
        n for n, i in enumerate(instructions) if i.keyword == "RUN" and "pip install -r" in i.args
    )
    assert requirements_install < source_copy
    # ... and that layer sees nothing of the source: only pyproject.toml and the script.
    copies_before = [copy_sources(i)[0] for i in instructions[:requirements_install] if i.keyword == "COPY"]
    assert copies_before == [["pyproject.toml", "docker/pyproject_requirements.py"]]


@DOCKERFILES
def test_the_extras_the_images_install_exist(dockerfile):
    pyproject = read_pyproject()
    install = next(i.args for i in _instructions(dockerfile, "RUN") if "pyproject_requirements.py" in i.args)
    extras = re.search(r"pyproject\.toml((?: [a-z]+)+) >", install)
    assert extras is not None, install
    requirements = requirements_script().requirements(pyproject, extras.group(1).split())
    assert any(r.startswith("fastapi") for r in requirements)  # the server
    assert any(r.startswith("torch") for r in requirements)
    assert any(r.startswith("opencv-python-headless") for r in requirements)  # mmdetection's models


def test_requirements_script_expands_self_references_and_rejects_unknown_extras():
    script = requirements_script()
    pyproject = {
        "project": {
            "name": "dyhead-serve",
            "dependencies": ["torch>=2.1"],
            "optional-dependencies": {"serve": ["fastapi"], "dev": ["dyhead-serve[serve]", "pytest"]},
        }
    }
    assert script.requirements(pyproject, ["dev"]) == ["torch>=2.1", "fastapi", "pytest"]
    with pytest.raises(ValueError, match="no extra 'gpux'"):
        script.requirements(pyproject, ["gpux"])


@DOCKERFILES
def test_runs_as_a_non_root_user(dockerfile):
    users = _instructions(dockerfile, "USER")
    assert users, "no USER: the server would run as root"
    uid = users[-1].args.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric, non-zero uid (Kubernetes' runAsNonRoot checks it)"


@DOCKERFILES
def test_settings_in_env_are_server_settings(dockerfile):
    for name in _env(dockerfile):
        if name.startswith(("DYHEAD_SERVE_", "DYHEAD_ENGINE_")) and name not in OTHER_VARIABLES:
            field = name.removeprefix("DYHEAD_SERVE_").lower()
            assert field in ServerSettings.model_fields, f"{dockerfile.name}: {name} is no server setting"


@DOCKERFILES
def test_healthcheck_asks_readyz_on_the_served_port(dockerfile):
    (healthcheck,) = _instructions(dockerfile, "HEALTHCHECK")
    options, _, command = healthcheck.args.partition(" CMD ")
    assert "--start-period=" in options
    probe = exec_form(command)
    assert probe[0] in ("python", "python3")
    assert "/readyz" in probe[-1] and "DYHEAD_SERVE_PORT" in probe[-1]
    port = _env(dockerfile)["DYHEAD_SERVE_PORT"]
    assert _instructions(dockerfile, "EXPOSE")[0].args == port


def test_cpu_image_command_is_a_valid_serve_command():
    (cmd,) = _instructions(CPU, "CMD")
    argv = exec_form(cmd.args)
    assert argv[0] == "dyhead-serve"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve" and args.host == "0.0.0.0"
    assert args.model is None, "the CPU image serves the embedded default"
    assert _env(CPU)["DYHEAD_SERVE_DEVICE"] == "cpu"


def test_gpu_image_runs_our_entrypoint_after_nvidias():
    (entrypoint,) = _instructions(GPU, "ENTRYPOINT")
    argv = exec_form(entrypoint.args)
    assert argv[0] == "/opt/nvidia/nvidia_entrypoint.sh"  # the base image's: driver checks, CUDA compat
    copied = {copy_sources(i)[1]: copy_sources(i)[0] for i in _instructions(GPU, "COPY")}
    assert copied[argv[1]] == ["docker/entrypoint.sh"]
    assert (DOCKER / "entrypoint.sh").stat().st_mode & 0o111, "entrypoint.sh must be executable in git too"
    (cmd,) = _instructions(GPU, "CMD")
    assert exec_form(cmd.args) == []  # no inherited CMD reaches the entrypoint


def test_gpu_image_has_tensorrt_at_least_10_14():
    """TensorRT 10.14 keeps the AOT kernel name our plugin returns (10.9 to 10.13.3 hand the
    builder a pointer into a destroyed string: NVIDIA/TensorRT python/src/infer/pyPlugin.cpp,
    getKernel); the 25.12 container ships TensorRT 10.14.1 (25.06 had 10.11)."""
    (base,) = _instructions(GPU, "FROM")
    match = re.fullmatch(r"nvcr\.io/nvidia/tensorrt:(\d\d)\.(\d\d)-py3", base.args)
    assert match is not None, base.args
    assert (int(match.group(1)), int(match.group(2))) >= (25, 12)


def test_gpu_image_torch_matches_the_base_cuda_major():
    """The base's CUDA 13 with torch's CUDA 13.0 wheels (one driver serves both)."""
    args = {i.args.split("=", 1)[0]: i.args.split("=", 1)[1] for i in _instructions(GPU, "ARG")}
    assert args["TORCH_INDEX_URL"].endswith("/cu130")


def test_embedded_default_model_is_package_data():
    """The CPU image installs the package as a wheel: the embedded model must be in it."""
    from dyhead_serve import zoo

    entry = zoo.ZOO[zoo.DEFAULT_MODEL]
    assert entry.embedded is not None
    package = REPO / "dyhead_serve"
    folder = (package / entry.embedded).parent
    patterns = read_pyproject()["tool"]["setuptools"]["package-data"]
    for path in [p for p in folder.iterdir() if p.is_file()]:
        relative = str(path.relative_to(package))
        assert any(fnmatch(relative, pattern) for pattern in patterns["dyhead_serve"]), relative


def test_requirements_script_runs_on_the_real_pyproject():
    requirements_script()  # skips before Python 3.11
    script, pyproject = DOCKER / "pyproject_requirements.py", REPO / "pyproject.toml"
    result = subprocess.run(
        [sys.executable, str(script), str(pyproject), "serve", "gpu"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = result.stdout.split()
    assert any(line.startswith("uvicorn") for line in lines)  # serve
    assert any(line.startswith("triton") for line in lines)  # gpu
    assert not any(line.startswith("dyhead-serve") for line in lines)
