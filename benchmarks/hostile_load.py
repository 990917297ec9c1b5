"""The REST service under hostile clients, on loopback only and bounded in time.

Starts ``dyhead-serve serve`` (the embedded default model, or ``--model DIR``) on 127.0.0.1, then:

1. baseline: a normal client sends one image after another while /healthz is probed every 50 ms;
2. attack: the same, while ``--trickle`` connections trickle their headers or their bodies one byte
   every 2 s (reconnecting when the server closes them) and requests of millions of elements arrive
   (a /v1 JSON body of a million image objects, a /v2 binary body of four million empty elements,
   a /v2 JSON body of three million; one after another, then ``--bomb-pause-s``), a PostScript
   program posted as a JPEG, a progressive JPEG of thousands of scans, and ``--chunkers``
   connections streaming one-byte chunks as fast as they can (reconnecting when refused);

and prints the normal client's latency in both phases, /healthz latency, and the request counts by
route and status from /metrics (no 500 is expected).

    python benchmarks/hostile_load.py [--model DIR] [--duration 30] [--trickle 40] [--chunkers 4]
                                      [--read-timeout-s 10]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from load import free_port, wait_ready  # noqa: E402  (the sibling script, as environment is imported)

from dyhead_serve.data.sample_image import synthetic_photo  # noqa: E402
from tests.pipeline.hostile_images import ENDLESS_EPS, many_scan_jpeg  # noqa: E402


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "dyhead_serve.cli", "-q", "serve", "--port", str(port),
               "--device", "cpu", "--read-timeout-s", str(args.read_timeout_s), "--threads", "1"]  # fmt: skip
    if args.model:
        command += ["--model", args.model]
    env = {**os.environ, "DYHEAD_SERVE_GRPC_PORT": "0"}  # HTTP is measured; 8001 may be taken
    return subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )


def jpeg(height: int = 480, width: int = 640) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(synthetic_photo(height, width, seed=3)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def normal_client(url: str, stop: threading.Event, latencies: list[float], statuses: list[int]) -> None:
    image = jpeg()
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            began = time.perf_counter()
            response = client.post("/v1/detect", files={"file": ("photo.jpg", image, "image/jpeg")})
            latencies.append(time.perf_counter() - began)
            statuses.append(response.status_code)


def probe_health(url: str, stop: threading.Event, latencies: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            began = time.perf_counter()
            client.get("/healthz")
            latencies.append(time.perf_counter() - began)
            time.sleep(0.05)


def trickle(port: int, stop: threading.Event, body: bool) -> None:
    """One connection that never finishes its request: reconnects whenever the server closes it."""
    head = b"POST /v1/detect HTTP/1.1\r\nHost: x\r\n"
    if body:
        head += b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(head)
                while not stop.wait(2.0):
                    sock.sendall(b"{" if body else b"X")
        except OSError:
            stop.wait(0.1)


def chunk_flood(port: int, stop: threading.Event) -> None:
    """One connection streaming one-byte chunks as fast as it can; reconnects when refused."""
    head = (b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
    chunks = b"1\r\na\r\n" * 10_000
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(head)
                while not stop.is_set():
                    sock.sendall(chunks)
        except OSError:
            stop.wait(0.01)


def hostile_files() -> list[tuple[str, bytes, str]]:
    """(name, bytes, content type) of uploads that cost far more than their size, or run a program."""
    return [
        ("loop.jpg", ENDLESS_EPS, "image/jpeg"),
        ("scans.jpg", many_scan_jpeg(7000, 7000, extra_scans=10_000, flat=True), "image/jpeg"),
    ]


def element_bombs(model: str) -> list[tuple[str, bytes, dict[str, str]]]:
    v1 = json.dumps({"images": [{"data": ""}] * 1_000_000}).encode()
    blob = struct.pack("<I", 0) * 4_000_000
    tensor = {
        "name": "image",
        "shape": [1],
        "datatype": "BYTES",
        "parameters": {"binary_data_size": len(blob)},
    }
    header = json.dumps({"inputs": [tensor]}).encode()
    v2_json = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [""] * 3_000_000}]}
    infer = f"/v2/models/{model}/infer"
    return [
        ("/v1/detect", v1, {"content-type": "application/json"}),
        (infer, header + blob, {"Inference-Header-Content-Length": str(len(header))}),
        (infer, json.dumps(v2_json).encode(), {"content-type": "application/json"}),
    ]


def bomber(url: str, model: str, stop: threading.Event, statuses: list[int], pause_s: float) -> None:
    """The three element bombs, one after another, then a pause, until the phase ends."""
    bodies = element_bombs(model)
    files = hostile_files()
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            for path, content, headers in bodies:
                statuses.append(client.post(path, content=content, headers=headers).status_code)
            for name, data, content_type in files:
                response = client.post("/v1/detect", files={"file": (name, data, content_type)})
                statuses.append(response.status_code)
            stop.wait(pause_s)


def summary(latencies: list[float]) -> str:
    if not latencies:
        return "no samples"
    ordered = sorted(latencies)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return (f"n {len(ordered):4d}  p50 {statistics.median(ordered) * 1000:7.1f} ms  "
            f"p90 {p90 * 1000:7.1f} ms  max {ordered[-1] * 1000:7.1f} ms")  # fmt: skip


def run_phase(
    url: str, port: int, seconds: float, attack: bool, args: argparse.Namespace, model: str
) -> dict:
    stop = threading.Event()
    result: dict = {"normal": [], "normal_status": [], "health": [], "bomb_status": []}
    threads = [
        threading.Thread(target=normal_client, args=(url, stop, result["normal"], result["normal_status"])),
        threading.Thread(target=probe_health, args=(url, stop, result["health"])),
    ]
    if attack:
        threads += [
            threading.Thread(target=trickle, args=(port, stop, i % 2 == 1)) for i in range(args.trickle)
        ]
        bomb_args = (url, model, stop, result["bomb_status"], args.bomb_pause_s)
        threads.append(threading.Thread(target=bomber, args=bomb_args))
        threads += [threading.Thread(target=chunk_flood, args=(port, stop)) for _ in range(args.chunkers)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(90)
    return result


def metrics_counts(url: str) -> list[str]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    lines = re.findall(r"^dyhead_http_requests_total\{.*$", text, re.MULTILINE)
    lines += re.findall(r"^dyhead_connections_closed_total\{.*$", text, re.MULTILINE)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="an exported model folder (default: the embedded model)"
    )
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of attack (and of baseline)")
    parser.add_argument("--trickle", type=int, default=40, help="trickling connections")
    parser.add_argument("--chunkers", type=int, default=4, help="connections streaming one-byte chunks")
    parser.add_argument("--read-timeout-s", type=float, default=10.0, help="the server's --read-timeout-s")
    parser.add_argument(
        "--bomb-pause-s",
        type=float,
        default=2.0,
        help="pause between rounds of the three element bombs (0: none)",
    )
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_server(args, port)
    try:
        try:
            wait_ready(process, url, timeout=180)
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None
        model = httpx.get(f"{url}/v1/models", timeout=10).json()["models"][0]["name"]
        baseline = run_phase(url, port, args.duration, False, args, model)
        attacked = run_phase(url, port, args.duration, True, args, model)
        print(
            f"server: --read-timeout-s {args.read_timeout_s:g}, model {model}; {args.duration:g} s per phase"
        )
        print(f"normal client, alone:        {summary(baseline['normal'])}")
        print(f"normal client, under attack: {summary(attacked['normal'])}")
        print(f"/healthz, alone:             {summary(baseline['health'])}")
        print(f"/healthz, under attack:      {summary(attacked['health'])}")
        statuses = sorted(set(attacked["normal_status"] + baseline["normal_status"]))
        print(f"normal client statuses: {statuses}")
        bombs = attacked["bomb_status"]
        print(f"element bombs, PostScript and scan-bomb uploads: {len(bombs)} requests "
              f"({args.bomb_pause_s:g} s pause per round of five), "
              f"statuses {sorted(set(bombs))}")  # fmt: skip
        print(f"{args.chunkers} connections streaming one-byte chunks")
        print(f"{args.trickle} trickling connections (half headers, half bodies, one byte every 2 s)")
        print("/metrics:")
        for line in metrics_counts(url):
            print("  " + line)
    finally:
        process.terminate()
        process.wait(60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
