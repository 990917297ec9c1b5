#!/usr/bin/env bash
# The plugin's AOT path (kernel -> PTX for sm_80..sm_120, assembled by ptxas) under the Triton
# versions that matter besides the one CI's torch brings: the floor pyproject.toml declares, and
# the one the GPU image ships (the Triton its torch pins). Each runs in a small environment of its
# own (Triton, pytest and this package without dependencies: the PTX tests import nothing else).
set -euo pipefail
cd "$(dirname "$0")/.."

# The Triton each torch of docker/Dockerfile pins (its wheel's Requires-Dist). A new torch there
# fails here until its pin is added, so the image's Triton is always the one tested.
torch_version="$(sed -n 's/^ARG TORCH_VERSION=//p' docker/Dockerfile)"
case "$torch_version" in
    2.9.1) image_triton=3.5.1 ;;
    *)
        echo "docker/Dockerfile installs torch $torch_version: add the Triton version it pins to $0" >&2
        exit 1
        ;;
esac
floor="$(sed -n 's/^ *"triton>=\([0-9.]*\)",*$/\1/p' pyproject.toml)"
if [[ -z "$floor" ]]; then
    echo "no \"triton>=X.Y\" line in pyproject.toml" >&2
    exit 1
fi

for version in "$floor" "$image_triton"; do
    env=".venv-triton-$version"
    echo "-- Triton $version ($([[ $version == "$floor" ]] && echo "pyproject.toml's floor" || echo "the GPU image's, torch $torch_version"))"
    python3 -m venv "$env"
    "$env/bin/python" -m pip install --quiet --upgrade pip
    "$env/bin/python" -m pip install --quiet "triton==$version" pytest
    # The editable build prints setuptools' warnings; show them only when it fails.
    if ! log="$("$env/bin/python" -m pip install --quiet --no-deps -e . 2>&1)"; then
        echo "$log" >&2
        exit 1
    fi
    "$env/bin/python" -m pytest --noconftest -q -p no:cacheprovider -m "not slow" tests/plugins/test_mdcn_ptx.py
done
