"""Hostile clients against a real server (uvicorn with our protocol, on loopback): trickled
headers and bodies, idle and surplus connections, disconnects mid-upload, requests with millions of
elements. None may stall the event loop, hold the server, or be counted as a server error."""

from __future__ import annotations

import json
import logging
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from dyhead_serve.server import ServerSettings, create_app
from tests.server.conftest import live_server, photo_bytes, running_server

MODEL = "dyhead_r50_atss_fpn_1x"
READ_TIMEOUT_S = 1.0
# Headers announcing 1000 bytes of JSON, and the first of them.
PARTIAL_JSON_UPLOAD = (
    b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
)


@pytest.fixture(scope="module")
def server(served_backend) -> Iterator[str]:
    settings = ServerSettings(warmup=False, read_timeout_s=READ_TIMEOUT_S, max_connections=40)
    with live_server(create_app(settings, backend=served_backend), settings) as url:
        yield url


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict, bytes, float]:
    """(status, headers, body, seconds) of the response on ``sock``, read until the server closes."""
    start = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    seconds = time.monotonic() - start
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0] else 0
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return status, headers, body, seconds


def status_counts(url: str, route: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    pattern = (
        rf'dyhead_http_requests_total\{{method="POST",route="{re.escape(route)}",status="(\d+)"\}} (\S+)'
    )
    return {status: float(count) for status, count in re.findall(pattern, text)}


def closed_counts(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return dict(
        (reason, float(count))
        for reason, count in re.findall(r'dyhead_connections_closed_total\{reason="(\w+)"\} (\S+)', text)
    )


def test_trickled_headers_get_408_at_the_deadline(server):
    sock = connect(server)
    sock.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: x\r\n")
    stop = time.monotonic() + 3 * READ_TIMEOUT_S
    try:
        while time.monotonic() < stop:  # one byte every 0.2 s: never a complete header block
            sock.sendall(b"X")
            time.sleep(0.2)
    except OSError:  # closed by the server: expected
        pass
    status, headers, body, _ = read_response(sock)
    assert status == 408, body
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert headers["connection"] == "close"
    assert closed_counts(server).get("headers_timeout", 0) >= 1


def test_a_silent_connection_is_closed_at_the_deadline(server):
    sock = connect(server)
    status, _, body, seconds = read_response(sock, timeout=5 * READ_TIMEOUT_S)
    assert status == 408 and seconds < 4 * READ_TIMEOUT_S, (status, body, seconds)


def test_a_silent_connection_gets_the_shorter_header_deadline(served_backend):
    """Connections that send nothing cannot hold the slots of max_connections for the whole
    read timeout: the line and headers have their own, shorter deadline."""
    settings = ServerSettings(warmup=False, read_timeout_s=30, header_timeout_s=READ_TIMEOUT_S)
    with live_server(create_app(settings, backend=served_backend), settings) as url:
        sock = connect(url)
        status, _, body, seconds = read_response(sock, timeout=20)
        assert status == 408 and seconds < 10, (status, body, seconds)
        assert "header_timeout_s" in json.loads(body)["error"]["message"]
        # With its headers in time, a request still has the whole read timeout for its body.
        sock = connect(url)
        sock.sendall(PARTIAL_JSON_UPLOAD)
        sock.settimeout(3 * READ_TIMEOUT_S)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # no answer past the header deadline: the body is still awaited
        sock.close()


def test_trickled_body_gets_408_from_the_app(server):
    before = status_counts(server, "/v1/detect").get("408", 0)
    sock = connect(server)
    sock.sendall(PARTIAL_JSON_UPLOAD)
    status, headers, body, seconds = read_response(sock)
    assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout", body
    assert headers["connection"] == "close" and seconds < 4 * READ_TIMEOUT_S
    assert status_counts(server, "/v1/detect").get("408", 0) == before + 1


def test_connections_beyond_the_cap_are_refused(served_backend):
    settings = ServerSettings(warmup=False, read_timeout_s=30, max_connections=3)
    with live_server(create_app(settings, backend=served_backend), settings) as url:
        idle = [connect(url) for _ in range(3)]
        time.sleep(0.2)
        status, headers, body, _ = read_response(connect(url))
        assert status == 503 and json.loads(body)["error"]["code"] == "too_many_connections"
        assert headers["retry-after"] == "1"
        for sock in idle:
            sock.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the slots are free again
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError("the server did not accept connections again")
        assert closed_counts(url)["too_many_connections"] >= 1


def test_disconnect_mid_upload_is_499_without_a_traceback(server, caplog):
    before = status_counts(server, "/v1/detect")
    caplog.set_level(logging.INFO)
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    for content_type, start in (
        (b"application/json", b'{"images": [{"data": "'),
        (b"multipart/form-data; boundary=b", part),
    ):
        sock = connect(server)
        sock.sendall(
            b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: " + content_type
            + b"\r\nContent-Length: 100000\r\n\r\n" + start + b"A" * 5000
        )  # fmt: skip
        time.sleep(0.2)
        sock.close()
    deadline = time.monotonic() + 10
    while status_counts(server, "/v1/detect").get("499", 0) < before.get("499", 0) + 2:
        assert time.monotonic() < deadline, status_counts(server, "/v1/detect")
        time.sleep(0.05)
    after = status_counts(server, "/v1/detect")
    assert after.get("500", 0) == before.get("500", 0)
    assert not [r for r in caplog.records if r.exc_info or "unhandled" in r.getMessage()]


def test_shutdown_answers_a_trickling_upload_at_once(served_backend):
    settings = ServerSettings(warmup=False, read_timeout_s=60)
    with running_server(create_app(settings, backend=served_backend), settings) as live:
        sock = connect(live.url)
        sock.sendall(PARTIAL_JSON_UPLOAD)
        time.sleep(0.3)
        started = time.monotonic()
        live.server.should_exit = True  # what SIGTERM does
        status, _, body, _ = read_response(sock)
        live.thread.join(30)
        assert status == 503 and json.loads(body)["error"]["code"] == "shutting_down", body
        assert not live.thread.is_alive() and time.monotonic() - started < 10  # not held 60 s


# -- requests that would be parsed element by element -----------------------------------------


def hostile_bodies() -> list[tuple[str, bytes, dict[str, str], int]]:
    """(path, body, headers, expected status) of requests with millions of elements."""
    v1 = json.dumps({"images": [{"data": ""}] * 1_000_000}).encode()
    blob = struct.pack("<I", 0) * 4_000_000
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    ).encode()
    v2_json = json.dumps(
        {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [""] * 3_000_000}]}
    )
    infer = f"/v2/models/{MODEL}/infer"
    return [
        ("/v1/detect", v1, {"content-type": "application/json"}, 413),
        (infer, header + blob, {"Inference-Header-Content-Length": str(len(header))}, 400),
        (infer, v2_json.encode(), {"content-type": "application/json"}, 413),
    ]


def test_healthz_stays_fast_while_millions_of_elements_arrive(server):
    bodies = hostile_bodies()
    statuses: list[int] = []
    latencies: list[float] = []
    stop = threading.Event()

    def attack() -> None:
        with httpx.Client(base_url=server, timeout=60) as client:
            for _ in range(3):
                for path, body, headers, _ in bodies:
                    statuses.append(client.post(path, content=body, headers=headers).status_code)
        stop.set()

    attacker = threading.Thread(target=attack)
    with httpx.Client(base_url=server, timeout=30) as probe:
        probe.get("/healthz")
        attacker.start()
        while not stop.is_set():
            began = time.perf_counter()
            assert probe.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - began)
            time.sleep(0.01)
    attacker.join()
    assert statuses == [status for _, _, _, status in bodies] * 3
    latencies.sort()
    p90, worst = latencies[int(0.9 * (len(latencies) - 1))], latencies[-1]
    p50 = latencies[len(latencies) // 2]
    print(f"/healthz under attack: {len(latencies)} probes, p50 {p50 * 1000:.1f} ms, "
          f"p90 {p90 * 1000:.1f} ms, max {worst * 1000:.1f} ms")  # fmt: skip
    # Before the fix each request held the loop 4 to 12 s, so most probes waited seconds. The
    # target is 100 ms; only the p90 is asserted, since one probe can be late on a loaded machine.
    assert p90 < 0.1, (p90, worst)


def test_a_normal_request_still_succeeds_after_the_attacks(server):
    response = httpx.post(f"{server}/v1/detect", files={"file": ("ok.png", photo_bytes())}, timeout=30)
    assert response.status_code == 200 and response.json()["results"][0]["detections"]
