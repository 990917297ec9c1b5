"""Regenerate the protobuf modules of the gRPC server from their .proto file.

    python tools/gen_grpc.py

Writes ``open_inference_pb2.py`` and ``open_inference_pb2.pyi`` beside
``dyhead_serve/server/grpc/open_inference.proto`` (needs ``grpcio-tools``, in the ``dev`` extra).
The generated files are committed, so installing the server needs only ``grpcio`` and ``protobuf``;
the ``protobuf`` floor of the ``serve`` extra must be at least the version the generated module
checks for at import (its ``ValidateProtobufRuntimeVersion`` line).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = Path("dyhead_serve/server/grpc/open_inference.proto")


def main() -> int:
    # Paths relative to the root: the descriptor is registered under the file's path in the
    # package, a name no other project's .proto can take.
    os.chdir(ROOT)
    args = ["protoc", "-I.", "--python_out=.", "--pyi_out=.", str(PROTO)]
    code = protoc.main(args)
    if code != 0:
        print(f"protoc failed with {code}", file=sys.stderr)
    return int(code)


if __name__ == "__main__":
    raise SystemExit(main())
