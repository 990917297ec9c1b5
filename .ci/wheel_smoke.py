"""What a user who installs the wheel gets: run by the wheel's own virtual environment, from an
empty folder, with no source tree on the path (see .ci/run).

1. the only top-level name installed is ``dyhead_serve`` (``import export`` / ``import plugins``
   fail, ``dyhead_serve.export`` / ``dyhead_serve.plugins`` import);
2. ``dyhead-serve predict`` with the embedded model finds the shapes of a generated image;
3. ``dyhead-export onnx`` of the embedded model writes and verifies an export;
4. ``dyhead-serve serve`` of that export answers one ``/v1/detect`` request, and its KServe v2
   gRPC side (the committed protobuf module, with the ``serve`` extra's grpcio) says ready.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

BIN = Path(sysconfig.get_path("scripts"))


def step(text: str) -> None:
    print(f"-- {text}", flush=True)


def fail(text: str) -> None:
    print(f"wheel smoke test FAILED: {text}", file=sys.stderr)
    sys.exit(1)


def run(*args: str, timeout: float = 600) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        fail(f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result.stdout


def check_namespace() -> None:
    step("installed top-level names")
    purelib = Path(sysconfig.get_path("purelib"))
    ours = sorted(p.name for p in purelib.iterdir() if p.name.startswith(("dyhead", "export", "plugins")))
    if [n for n in ours if not n.endswith(".dist-info")] != ["dyhead_serve"]:
        fail(f"expected only dyhead_serve at the top of {purelib}, found {ours}")
    for bare in ("export", "plugins"):
        # -I: only what is installed counts (not the working folder, not PYTHONPATH); where it is
        # found is printed, so that a failure says what was found.
        probe = subprocess.run(
            [sys.executable, "-I", "-c", f"import {bare}; print({bare}.__spec__)"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0:
            fail(f"`import {bare}` works: a generic top-level package is installed ({probe.stdout.strip()})")
    run(sys.executable, "-c", "import dyhead_serve.export.onnx_export, dyhead_serve.plugins.schema")
    run(sys.executable, "-c", "import dyhead_serve.cli.export")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def multipart(path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def check_grpc_ready(port: int) -> None:
    import grpc

    from dyhead_serve.server.grpc import open_inference_pb2 as pb

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        server_ready = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerReady",
            request_serializer=pb.ServerReadyRequest.SerializeToString,
            response_deserializer=pb.ServerReadyResponse.FromString,
        )
        if not server_ready(pb.ServerReadyRequest(), timeout=30).ready:
            fail("the gRPC side says not ready while /readyz says ready")
    print("   gRPC ServerReady: ready")


def serve_one_request(model: Path, image: Path) -> None:
    step("dyhead-serve serve + one /v1/detect request + gRPC ServerReady")
    port, grpc_port = free_port(), free_port()
    server = subprocess.Popen(
        [str(BIN / "dyhead-serve"), "-q", "serve", "--model", str(model), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "DYHEAD_SERVE_GRPC_PORT": str(grpc_port)},
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                fail(
                    f"the server exited {server.returncode}: {server.stdout.read() if server.stdout else ''}"
                )
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                fail("the server was not ready within 120 s")
            time.sleep(0.5)
        body, content_type = multipart(image)
        request = urllib.request.Request(f"{base}/v1/detect", body, {"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.load(response)
        (result,) = answer["results"]
        if not result["detections"]:
            fail(f"the server found nothing: {answer}")
        print(f"   {len(result['detections'])} detections, best {result['detections'][0]}")
        check_grpc_ready(grpc_port)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    check_namespace()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from dyhead_serve.data.synthetic import generate_synthetic_dataset

        shapes = generate_synthetic_dataset(work / "shapes", num_train=0, num_val=1, image_size=320, seed=3)
        (image,) = shapes.image_root("val").glob("*.png")

        step("dyhead-serve predict (the embedded model)")
        (result,) = json.loads(run(str(BIN / "dyhead-serve"), "-q", "predict", str(image)))
        if not result["detections"]:
            fail("the embedded model found nothing in a generated shapes image")
        print(f"   {len(result['detections'])} detections, best {result['detections'][0]}")

        step("dyhead-export onnx --model default")
        out = run(str(BIN / "dyhead-export"), "onnx", "--model", "default", "--out", str(work / "exported"),
                  "--verify-image", str(image))  # fmt: skip
        if "ok: wrote" not in out:
            fail(f"the export did not verify:\n{out}")

        serve_one_request(work / "exported", image)
    print("wheel smoke test passed")


if __name__ == "__main__":
    main()
