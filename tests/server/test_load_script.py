"""benchmarks/load.py: loopback only, bounded, and it prints its table."""

from __future__ import annotations

import pytest

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def load_script():
    return load_benchmark("load")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://localhost:8000/", "http://[::1]:8000"])
def test_loopback_targets_are_accepted(load_script, url):
    assert load_script.require_loopback(url) == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1:8000",
        "http://192.168.1.2",
        "http://example.com",
        "http://0.0.0.0:8000",
        "ftp://127.0.0.1",
    ],
)
def test_other_targets_are_refused(load_script, url, capsys):
    with pytest.raises(ValueError):
        load_script.require_loopback(url)
    with pytest.raises(SystemExit):
        load_script.main(["--url", url, "--requests", "1"])
    error = capsys.readouterr().err
    assert "loopback" in error or "http://" in error


def test_limits_are_enforced(load_script):
    for args in (["--requests", "100000"], ["--duration", "3600"], ["--clients", "1000"]):
        with pytest.raises(SystemExit):
            load_script.main(["--url", "http://127.0.0.1:9", *args])


@pytest.mark.slow
def test_short_run_against_real_servers(load_script, tiny_model_dir, capsys):
    code = load_script.main(
        [
            "--model",
            str(tiny_model_dir),
            "--requests",
            "12",
            "--duration",
            "20",
            "--clients",
            "1",
            "--clients",
            "4",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "batching on (8)" in out and "batching off" in out and "throughput" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("batching")]
    assert len(rows) == 4 and all(row[-6] == "0" for row in rows)  # no errors
