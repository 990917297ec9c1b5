"""Load test of `dyhead-serve serve` on loopback: throughput, p50/p90/p99 latency and errors at
1, 8 and 32 concurrent clients, with dynamic batching on and off.

With --model, it starts two servers itself on free loopback ports (batching on: --max-batch-size
B; off: --max-batch-size 1), runs each client level against one then the other, and stops them.
With --url, it measures a server already running on this machine (one mode).

    python benchmarks/load.py --model exported/tiny                       # on vs off, 1/8/32 clients
    python benchmarks/load.py --model exported/atss --requests 64 --duration 60 --clients 1 --clients 8
    python benchmarks/load.py --url http://127.0.0.1:8000 --image photo.jpg
    python benchmarks/load.py --model dyhead_r50_atss_fpn_1x --weights atss.pth --clients 1 --clients 4

A zoo name runs as `serve` runs it (``--backend auto``: on a CPU, ONNX Runtime from the export
cache; the first start exports it once, which the readiness wait allows for).

Every level is bounded: at most --requests answered requests and --duration seconds. Only
loopback addresses are accepted as targets. Each client sends one image per request
(multipart POST /v1/detect) and waits for the answer before sending the next.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from environment import describe
from PIL import Image

from dyhead_serve.runtime.options import BACKENDS

MAX_REQUESTS = 5000
MAX_DURATION_S = 300.0
MAX_CLIENTS = 64


def require_loopback(url: str) -> str:
    """``url`` without a trailing slash, if its host is a loopback address; ValueError otherwise."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url}: use an http:// URL")
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"{url}: this load test only targets loopback (127.0.0.0/8, ::1, localhost)")
    return url.rstrip("/")


@dataclass
class LevelResult:
    mode: str
    clients: int
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    mean_batch: float | None = None

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def batch_totals(url: str) -> tuple[float, float]:
    """(sum, count) of the server's dyhead_batch_size histogram."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^dyhead_batch_size_(sum|count) (\S+)$", text, re.M)
    }
    return found.get("sum", 0.0), found.get("count", 0.0)


async def run_level(
    url: str, image: bytes, mode: str, clients: int, requests: int, duration: float
) -> LevelResult:
    """``clients`` closed-loop clients until ``requests`` answers or ``duration`` seconds."""
    result = LevelResult(mode, clients)
    sent = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        for _ in range(2):  # warm the connection pool and the server's shapes; not counted
            await client.post("/v1/detect", files={"file": ("load.jpg", image, "image/jpeg")})
        before = batch_totals(url)
        start = time.perf_counter()
        deadline = start + duration

        async def one_client() -> None:
            nonlocal sent
            while sent < requests and time.perf_counter() < deadline:
                sent += 1
                t0 = time.perf_counter()
                try:
                    response = await client.post(
                        "/v1/detect", files={"file": ("load.jpg", image, "image/jpeg")}
                    )
                    status = str(response.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                if status == "200":
                    result.latencies.append(time.perf_counter() - t0)
                else:
                    result.errors[status] = result.errors.get(status, 0) + 1

        await asyncio.gather(*(one_client() for _ in range(clients)))
        result.wall_s = time.perf_counter() - start
    after = batch_totals(url)
    if after[1] > before[1]:
        result.mean_batch = (after[0] - before[0]) / (after[1] - before[1])
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(model: str, port: int, batch_size: int, args: argparse.Namespace) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "dyhead_serve.cli", "-q", "serve", "--model", model, "--host", "127.0.0.1",
        "--port", str(port), "--device", args.device, "--max-batch-size", str(batch_size),
        "--max-batch-delay-ms", str(args.max_batch_delay_ms), "--max-queue", str(4 * MAX_CLIENTS),
        "--threads", str(args.threads), "--backend", args.backend,
        *(["--weights", str(args.weights)] if args.weights else []),
    ]  # fmt: skip
    # HTTP is measured: no gRPC listener (whose default port may be taken on a shared machine).
    env = {**os.environ, "DYHEAD_SERVE_GRPC_PORT": "0"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_ready(process, f"http://127.0.0.1:{port}", timeout=900)
    except RuntimeError:
        process.kill()
        raise
    return process


def wait_ready(process: subprocess.Popen, url: str, timeout: float) -> None:
    """Poll ``url``/readyz until it answers 200 (RuntimeError if ``process`` exits or time runs out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the server exited with {process.returncode}: {process.communicate()[1][-2000:]}"
            )
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not become ready within {timeout:g} s")


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def format_table(results: list[LevelResult]) -> str:
    header = (
        f"{'mode':<16}{'clients':>8}{'ok':>7}{'errors':>8}{'img/s':>9}"
        f"{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'batch':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        errors = sum(r.errors.values())
        rate = len(r.latencies) / r.wall_s if r.wall_s else 0.0
        batch = f"{r.mean_batch:.1f}" if r.mean_batch is not None else "-"
        lines.append(
            f"{r.mode:<16}{r.clients:>8}{len(r.latencies):>7}{errors:>8}{rate:>9.2f}"
            f"{r.percentile(50) * 1000:>9.0f}{r.percentile(90) * 1000:>9.0f}"
            f"{r.percentile(99) * 1000:>9.0f}{batch:>7}"
        )
    by_mode: dict[str, dict[int, float]] = {}
    for r in results:
        by_mode.setdefault(r.mode, {})[r.clients] = len(r.latencies) / r.wall_s if r.wall_s else 0.0
    if len(by_mode) == 2:
        (on, on_rates), (off, off_rates) = by_mode.items()
        gains = [f"{c} clients x{on_rates[c] / off_rates[c]:.2f}" for c in on_rates if off_rates.get(c)]
        lines.append(f"\nthroughput {on} / {off}: " + ", ".join(gains))
    kinds = sorted({k for r in results for k in r.errors})
    if kinds:
        lines.append(
            "errors by kind: " + ", ".join(f"{k}: {sum(r.errors.get(k, 0) for r in results)}" for k in kinds)
        )
    return "\n".join(lines)


def load_image(path: Path | None) -> bytes:
    if path is not None:
        return path.read_bytes()
    from dyhead_serve.data.sample_image import synthetic_photo

    buffer = io.BytesIO()
    Image.fromarray(synthetic_photo(480, 640, seed=0)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--model", help="model to serve (folder or zoo name): batching on and off are compared"
    )
    target.add_argument("--url", help="a running server on loopback, e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--clients", type=int, action="append", default=None, help="levels (default 1, 8, 32)"
    )
    parser.add_argument(
        "--requests", type=int, default=200, help=f"answers per level (default 200, max {MAX_REQUESTS})"
    )
    parser.add_argument(
        "--duration", type=float, default=30.0, help=f"seconds per level (default 30, max {MAX_DURATION_S:g})"
    )
    parser.add_argument(
        "--image", type=Path, default=None, help="image to send (default: a 640x480 photo-like JPEG)"
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=8, help="batch size with batching on (default 8)"
    )
    parser.add_argument("--max-batch-delay-ms", type=float, default=10.0, help="batching delay (default 10)")
    parser.add_argument(
        "--weights", type=Path, default=None, help="a local copy of the zoo model's weights (serve --weights)"
    )
    parser.add_argument(
        "--backend",
        default="auto",
        choices=BACKENDS,
        help="server backend (default auto: a zoo name runs from the export cache)",
    )
    parser.add_argument("--device", default="cpu", help="server device (default cpu)")
    parser.add_argument("--threads", type=int, default=0, help="server ONNX Runtime threads (0: its default)")
    args = parser.parse_args(argv)
    clients = args.clients or [1, 8, 32]
    if not 1 <= args.requests <= MAX_REQUESTS or not 0 < args.duration <= MAX_DURATION_S:
        parser.error(f"--requests must be 1..{MAX_REQUESTS} and --duration 0..{MAX_DURATION_S:g}")
    if not all(1 <= c <= MAX_CLIENTS for c in clients):
        parser.error(f"--clients must be 1..{MAX_CLIENTS}")
    image = load_image(args.image)
    results: list[LevelResult] = []
    if args.url is not None:
        try:
            url = require_loopback(args.url)
        except ValueError as exc:
            parser.error(str(exc))
        for level in clients:
            results.append(asyncio.run(run_level(url, image, "server", level, args.requests, args.duration)))
            print(format_table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    else:
        # Both servers run for the whole benchmark (an idle one costs nothing) and the modes take
        # turns at each level, so that a change in the machine's background load hits both alike.
        modes = [(f"batching on ({args.max_batch_size})", args.max_batch_size), ("batching off", 1)]
        servers: dict[str, tuple[subprocess.Popen, str]] = {}
        try:
            for mode, batch_size in modes:
                port = free_port()
                servers[mode] = (start_server(args.model, port, batch_size, args), f"http://127.0.0.1:{port}")
            for level in clients:
                for mode, _ in modes:
                    url = require_loopback(servers[mode][1])
                    results.append(
                        asyncio.run(run_level(url, image, mode, level, args.requests, args.duration))
                    )
                    print(format_table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
        finally:
            for process, _ in servers.values():
                stop_server(process)
        results.sort(key=lambda r: [m for m, _ in modes].index(r.mode))
    print(describe())
    print(f"image: {args.image or 'synthetic 640x480 JPEG'}")
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
