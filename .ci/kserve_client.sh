#!/usr/bin/env bash
# The kserve SDK's v2 clients (REST and gRPC) against a live `dyhead-serve serve`, in a small
# environment of their own: kserve requires uvicorn[standard] (uvloop, httptools), pandas,
# kubernetes..., which installed into the dev environment would switch the event loop and HTTP
# parser that uvicorn picks for every other test. The server is the dev environment's
# `dyhead-serve` (DYHEAD_SERVE, else the one on PATH); the test starts it on free loopback ports
# and stops it at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

server="${DYHEAD_SERVE:-$(command -v dyhead-serve || true)}"
if [[ -z "$server" || ! -x "$server" ]]; then
    echo "no dyhead-serve to test: activate the dev environment or set DYHEAD_SERVE" >&2
    exit 1
fi
server="$(realpath "$server")"

env=.venv-kserve
python3 -m venv "$env"
"$env/bin/python" -m pip install --quiet --upgrade pip
"$env/bin/python" -m pip install --quiet "kserve==0.21.*" pytest
# The test skips where kserve does not import (the dev environment): here that is a failure.
"$env/bin/python" -c "import kserve"
echo "kserve $("$env/bin/python" -c 'import importlib.metadata as m; print(m.version("kserve"))'), server $server"
DYHEAD_SERVE="$server" "$env/bin/python" -m pytest --noconftest -q -p no:cacheprovider \
    tests/clients/test_kserve_sdk.py
