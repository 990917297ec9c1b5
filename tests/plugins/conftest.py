"""Kernel tests run in Triton's CPU interpreter; they skip when Triton is not installed."""

from __future__ import annotations

import pytest

pytest.importorskip("triton", reason="the Triton kernel tests need triton (pip install triton)")


@pytest.fixture(autouse=True)
def triton_interpreter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU tensors run the kernel in Triton's interpreter only under TRITON_INTERPRET=1; the
    tests marked ``gpu`` or ``tensorrt`` run (and compile) it for real, so never under it."""
    if request.node.get_closest_marker("gpu") or request.node.get_closest_marker("tensorrt"):
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    else:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
