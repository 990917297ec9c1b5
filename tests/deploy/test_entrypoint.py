"""docker/entrypoint.sh, run here with stand-ins for the two commands it calls (`dyhead-export`,
`dyhead-serve`) that record their arguments: what it runs must parse with the real CLIs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from dyhead_serve.cli import build_parser as serve_parser
from dyhead_serve.cli.export import build_parser as export_parser
from dyhead_serve.cli.export_engine import server_batch_size
from dyhead_serve.server.settings import ServerSettings
from tests.deploy.conftest import DOCKER, find_tool

ENTRYPOINT = DOCKER / "entrypoint.sh"
ENGINE_DIR = "/var/lib/dyhead-serve/engines/m-0123/trt10.11.0.33-nvidia-h100-sm90-fp16-coco-batch4"

# Each records its arguments one per line, and its DYHEAD_* environment.
_RECORDER = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$RECORD_DIR/{name}.args"
env | grep '^DYHEAD_' | sort > "$RECORD_DIR/{name}.env" || true
{tail}
"""


@pytest.fixture
def stand_ins(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tails = {
        "dyhead-export": f'echo "building..." >&2\necho "{ENGINE_DIR}"\nexit "${{EXPORT_STATUS:-0}}"',
        "dyhead-serve": "exit 0",
    }
    for name, tail in tails.items():
        path = bin_dir / name
        path.write_text(_RECORDER.format(name=name, tail=tail))
        path.chmod(0o755)
    return tmp_path


def _run(stand_ins: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DYHEAD_")}
    clean.update(env, PATH=f"{stand_ins / 'bin'}:{clean['PATH']}", RECORD_DIR=str(stand_ins))
    return subprocess.run(
        ["bash", str(ENTRYPOINT), *args], env=clean, capture_output=True, text=True, timeout=30, check=False
    )


def _recorded(stand_ins: Path, name: str) -> tuple[list[str], dict[str, str]]:
    args = (stand_ins / f"{name}.args").read_text().splitlines()
    env = dict(line.split("=", 1) for line in (stand_ins / f"{name}.env").read_text().splitlines())
    return args, env


def test_defaults_build_then_serve_the_engine(stand_ins):
    result = _run(stand_ins)
    assert result.returncode == 0, result.stderr
    engine_args, _ = _recorded(stand_ins, "dyhead-export")
    parsed = export_parser().parse_args(engine_args)
    assert parsed.command == "engine"
    # No batch size is restated here: the engine and the server both take the server's default.
    assert (parsed.model, parsed.config, parsed.precision, parsed.max_batch) == (None, None, "fp16", None)
    assert server_batch_size() == ServerSettings().max_batch_size

    serve_args, serve_env = _recorded(stand_ins, "dyhead-serve")
    args = serve_parser().parse_args(serve_args)
    assert args.command == "serve"
    assert (args.model, args.backend, args.host) == (ENGINE_DIR, "tensorrt", "0.0.0.0")
    assert args.max_batch_size is None and "DYHEAD_SERVE_MAX_BATCH_SIZE" not in serve_env


def test_the_batch_size_variable_reaches_the_build_and_the_server(stand_ins, monkeypatch):
    result = _run(stand_ins, DYHEAD_SERVE_MAX_BATCH_SIZE="4")
    assert result.returncode == 0, result.stderr
    engine_args, engine_env = _recorded(stand_ins, "dyhead-export")
    assert export_parser().parse_args(engine_args).max_batch is None
    monkeypatch.setenv("DYHEAD_SERVE_MAX_BATCH_SIZE", engine_env["DYHEAD_SERVE_MAX_BATCH_SIZE"])
    assert server_batch_size() == 4  # what `dyhead-export engine` builds the profile for
    assert _recorded(stand_ins, "dyhead-serve")[1]["DYHEAD_SERVE_MAX_BATCH_SIZE"] == "4"


def test_model_settings_go_to_the_build_and_flags_to_the_server(stand_ins):
    result = _run(
        stand_ins, "--port", "9000", "--max-batch-size", "2",
        DYHEAD_SERVE_MODEL="dyhead_r50_atss_fpn_1x", DYHEAD_SERVE_WEIGHTS="/models/atss.pth",
        DYHEAD_ENGINE_PRECISION="fp32", DYHEAD_ENGINE_PROFILE="coco-batch4", DYHEAD_SERVE_API_KEY="k",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    parsed = export_parser().parse_args(_recorded(stand_ins, "dyhead-export")[0])
    assert (parsed.model, parsed.weights) == ("dyhead_r50_atss_fpn_1x", "/models/atss.pth")
    assert parsed.precision == "fp32"
    assert (parsed.profile, parsed.max_batch) == ("coco-batch4", 2)  # the server's --max-batch-size

    serve_args, serve_env = _recorded(stand_ins, "dyhead-serve")
    args = serve_parser().parse_args(serve_args)
    assert (args.model, args.port, args.max_batch_size) == (ENGINE_DIR, 9000, 2)
    # The source's variables would contradict --model in the server's settings; others pass.
    assert "DYHEAD_SERVE_MODEL" not in serve_env and "DYHEAD_SERVE_WEIGHTS" not in serve_env
    assert serve_env["DYHEAD_SERVE_API_KEY"] == "k"


def test_config_and_weights(stand_ins):
    result = _run(stand_ins, DYHEAD_SERVE_CONFIG="/models/my.yaml", DYHEAD_SERVE_WEIGHTS="/models/my.pth")
    assert result.returncode == 0, result.stderr
    parsed = export_parser().parse_args(_recorded(stand_ins, "dyhead-export")[0])
    assert (parsed.config, parsed.weights, parsed.model) == ("/models/my.yaml", "/models/my.pth", None)
    assert "DYHEAD_SERVE_CONFIG" not in _recorded(stand_ins, "dyhead-serve")[1]


def test_a_failed_build_stops_before_serving(stand_ins):
    result = _run(stand_ins, EXPORT_STATUS="2")
    assert result.returncode == 2
    assert not (stand_ins / "dyhead-serve.args").exists()


def test_a_command_instead_of_flags_runs_that_command(stand_ins):
    result = _run(stand_ins, "echo", "hello")
    assert result.returncode == 0 and result.stdout == "hello\n"
    assert not (stand_ins / "dyhead-export.args").exists()


def test_shellcheck_finds_nothing():
    shellcheck = find_tool("shellcheck")
    result = subprocess.run([shellcheck, str(ENTRYPOINT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
