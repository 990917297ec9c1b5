"""The README's quick start runs exactly as written: its `bash` blocks under "## Quick start" are
read from README.md itself and each command is run verbatim (through bash) in a folder holding a
copy of what they name (the repository's `examples/`), against a live `dyhead-serve serve` started
by the README's own serve command on the port its curl commands name.

Steps 1 and 2 (the install and the test suite) are skipped: CI runs them itself.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from dyhead_serve.server.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIPPED = ("python3 -m venv ", "python -m pytest ")  # steps 1 and 2: CI runs them itself
URL = re.compile(r"https?://[^\s'\"]+")


def quickstart_commands() -> list[str]:
    """The commands of the `bash` blocks of README's "## Quick start" section, in order."""
    text = README.read_text()
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", section, re.MULTILINE | re.DOTALL):
        for line in block.splitlines():
            line = line.strip()
            if line and not line.startswith("#") and not line.startswith(SKIPPED):
                commands.append(line)
    return commands


def port_taken(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def test_the_quickstart_is_what_this_test_runs() -> None:
    """The parsing itself: a predict, a serve and curls that use the shipped sample."""
    commands = quickstart_commands()
    kinds = [shlex.split(command)[:2] for command in commands]
    assert ["dyhead-serve", "predict"] in kinds and ["dyhead-serve", "serve"] in kinds
    curls = [command for command in commands if command.startswith("curl ")]
    assert len(curls) >= 3 and any("/v1/detect/annotated" in c for c in curls)
    assert any("score_threshold=" in c for c in curls) and any("classes=" in c for c in curls)
    assert (ROOT / "examples" / "shapes.jpg").is_file()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty folder with a copy of the files the commands read."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    return tmp_path


def command_env() -> dict[str, str]:
    """This interpreter's console scripts first on PATH, this tree first on PYTHONPATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def server_port() -> int:
    """The port the README's curl commands call (skip if something else holds it, or gRPC's)."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (apt-get install curl): the README's examples use it")
    ports = {urlsplit(url).port for c in quickstart_commands() for url in URL.findall(c)}
    assert len(ports) == 1, f"the README's curl commands call one server, found ports {ports}"
    (port,) = ports
    assert port is not None
    for needed in (port, ServerSettings().grpc_port):
        if port_taken(needed):
            pytest.skip(f"port {needed} (the README's server) is already in use on this machine")
    return port


def wait_ready(url: str, server: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"the server was not ready within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def start_server(workdir: Path, server_port: int) -> Iterator[object]:
    """Starts the README's serve command (verbatim) once asked; stopped with SIGTERM at the end."""
    started: list[subprocess.Popen] = []
    log = workdir.parent / "server.log"

    def start(command: str) -> None:
        with log.open("wb") as out:
            server = subprocess.Popen(
                ["bash", "-c", f"exec {command}"], cwd=workdir, env=command_env(), stdout=out, stderr=out
            )
        started.append(server)
        wait_ready(f"http://127.0.0.1:{server_port}/readyz", server, log)

    yield start
    for server in started:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def check_predict(command: str, result: subprocess.CompletedProcess, workdir: Path) -> None:
    args = shlex.split(command)
    found = json.loads(result.stdout)
    assert found and all(image["detections"] for image in found), result.stdout
    if "--out-dir" in args:
        out_dir = workdir / args[args.index("--out-dir") + 1]
        for image in found:
            drawn = out_dir / Path(image["file"]).name
            assert drawn.read_bytes()[:2] == b"\xff\xd8", f"{drawn} is not a JPEG"


def check_curl(command: str, result: subprocess.CompletedProcess, workdir: Path) -> None:
    args = shlex.split(command)
    if "-o" in args:
        written = (workdir / args[args.index("-o") + 1]).read_bytes()
        assert written[:2] == b"\xff\xd8", f"not a JPEG: {written[:200]!r}"
        return
    body = json.loads(result.stdout)
    assert "error" not in body, body
    (image,) = body["results"]
    detections = image["detections"]
    assert detections, body
    (url,) = URL.findall(command)
    query = {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}
    if "classes" in query:
        assert {d["label"] for d in detections} <= set(query["classes"].split(","))
    if "score_threshold" in query:
        assert min(d["score"] for d in detections) >= float(query["score_threshold"])
    if "max_detections" in query:
        assert len(detections) <= int(query["max_detections"])


def test_the_quickstart_runs_as_written(workdir: Path, start_server) -> None:
    for command in quickstart_commands():
        if command.startswith("dyhead-serve serve"):
            start_server(command)
            continue
        env = command_env()
        result = subprocess.run(["bash", "-c", command], cwd=workdir, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{command}\nexit {result.returncode}\n{result.stderr[-3000:]}"
        if command.startswith("dyhead-serve predict"):
            check_predict(command, result, workdir)
        elif command.startswith("curl "):
            check_curl(command, result, workdir)
        else:
            raise AssertionError(f"this test does not know how to check {command!r}: teach it")
