"""A full disk while exporting: one ``error:`` line, exit 2, and no truncated file left (a small
tmpfs stands in for the full disk; the tests skip where this machine may not mount one)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dyhead_serve.cli.export import main as export_main


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_onnx_export_on_a_full_disk_leaves_no_partial_file(small_disk, capsys):
    out = small_disk / "default"
    code = export_main(["onnx", "--model", "default", "--out", str(out), "--no-verify"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"error: cannot write the export to {out} (No space left on device)" in err
    assert list(out.iterdir()) == []  # neither model.onnx nor the staging folder
