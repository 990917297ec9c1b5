"""``dyhead-serve serve`` as a real uvicorn process on loopback: ready, answers, drains on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from dyhead_serve.cli import main as cli_main
from tests.server.conftest import free_port, photo_bytes, wait_url_ready

REPO = Path(__file__).resolve().parents[2]


def start_server(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dyhead_serve.cli", "serve", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def images_in_flight(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    match = re.search(r"^dyhead_images_in_flight (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_real_server_answers_and_drains_on_sigterm(tiny_model_dir, stop_signal):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_server("--model", str(tiny_model_dir), "--device", "cpu", "--port", str(port))
    try:
        wait_url_ready(url, process=process)
        first = httpx.post(f"{url}/v1/detect", files={"file": ("a.png", photo_bytes())}, timeout=30)
        assert first.status_code == 200 and first.json()["results"][0]["detections"]

        # A request of 8 images is in flight when the signal arrives: it must still be answered
        # (SIGHUP, a closed terminal, used to kill the process at once).
        files = [("files", (f"{i}.png", photo_bytes(seed=i))) for i in range(8)]
        answers: list[httpx.Response] = []
        sender = threading.Thread(
            target=lambda: answers.append(httpx.post(f"{url}/v1/detect", files=files, timeout=60))
        )
        sender.start()
        deadline = time.monotonic() + 30
        while images_in_flight(url) == 0 and sender.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        process.send_signal(stop_signal)
        sender.join(60)
        assert answers and answers[0].status_code == 200, answers
        assert len(answers[0].json()["results"]) == 8
        assert process.wait(60) == 0
        stderr = process.communicate()[1]
        assert "shutting down" in stderr, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow  # a second server process: imports alone take seconds on a small machine
def test_serve_exits_2_when_the_model_cannot_be_loaded(tmp_path):
    empty = tmp_path / "exported"  # a folder, so it resolves as an export; loading it fails
    empty.mkdir()
    process = start_server("--model", str(empty), "--port", str(free_port()))
    try:
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 2, stderr
    assert "error: cannot serve the model" in stderr and str(empty) in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-batch-size", "0"], "max_batch_size"),
        (["--cors-origins", "a", "--port", "70000"], "port"),
        (["--config", "dyhead_r50_atss_fpn_1x"], "--config needs --weights"),
        (["--model", "/nonexistent/model"], "unknown model '/nonexistent/model'"),
    ],
    ids=["bad-batch-size", "bad-port", "config-without-weights", "unknown-model"],
)
def test_serve_refuses_bad_settings_before_starting(args, message, capsys):
    assert cli_main(["serve", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow  # two worker processes, each loading the model
def test_metrics_count_every_worker(tiny_model_dir):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_server(
        "--model", str(tiny_model_dir), "--device", "cpu", "--port", str(port), "--workers", "2"
    )
    try:
        wait_url_ready(url, process=process)
        for i in range(8):  # a new connection each: the two workers share them
            response = httpx.post(
                f"{url}/v1/detect", files={"file": ("a.png", photo_bytes(seed=i))}, timeout=60
            )
            assert response.status_code == 200
        pattern = r'^dyhead_http_requests_total\{method="POST",route="/v1/detect",status="200"\} (\S+)$'
        for _ in range(8):  # whichever worker answers, it reports both workers' requests
            text = httpx.get(f"{url}/metrics", timeout=10).text
            assert [float(n) for n in re.findall(pattern, text, re.MULTILINE)] == [8.0], text
            assert re.search(r"^dyhead_ready 1\.0$", text, re.MULTILINE), text
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
