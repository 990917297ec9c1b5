"""Options and environment that name the wrong kind of thing, and files that cannot be written:
each one line ``error: ...`` and exit 2 (or, for a write that fails per image, the results kept
and exit 1), never a traceback."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from PIL import Image

from dyhead_serve.checkpoint.cache import cache_folder
from dyhead_serve.cli import main
from dyhead_serve.errors import UserError


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["-q", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_out_dir_naming_a_file_is_exit_2(capsys, tmp_path, photo_path):
    a_file = tmp_path / "afile"
    a_file.write_text("")
    code, out, err = _run(capsys, "predict", "--out-dir", str(a_file), str(photo_path))
    assert code == 2 and out == ""
    assert err.strip() == f"error: --out-dir {a_file}: a file, not a folder"


def test_cache_variable_naming_a_file_is_exit_2(capsys, tmp_path, photo_path, monkeypatch):
    a_file = tmp_path / "afile"
    a_file.write_text("")
    monkeypatch.setenv("DYHEAD_SERVE_CACHE", str(a_file))
    code, _, err = _run(capsys, "predict", "--model", "dyhead_r50_atss_fpn_1x", str(photo_path))
    assert code == 2
    assert err.strip() == f"error: DYHEAD_SERVE_CACHE={a_file}: not a folder; point it at a writable folder"


def test_cache_folder_on_a_read_only_file_system_is_a_user_error(monkeypatch):
    monkeypatch.setenv("DYHEAD_SERVE_CACHE", "/proc/dyhead-serve-cache")  # /proc takes no new folders
    with pytest.raises(UserError, match=r"cannot write the cache folder .*set DYHEAD_SERVE_CACHE"):
        cache_folder("engines")


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e9"])
def test_serve_refuses_non_finite_limits(capsys, value):
    code, _, err = _run(capsys, "serve", f"--max-upload-mb={value}")
    assert code == 2
    assert err.startswith("error: invalid server settings: max_upload_mb")


def test_a_full_disk_while_drawing_keeps_the_results(capsys, tmp_path, photo_path, monkeypatch):
    out_dir = tmp_path / "drawn"

    def no_space(self, fp, *args, **kwargs):
        with open(fp, "wb") as partial:  # half a file, then the disk is full
            partial.write(b"\xff\xd8")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", no_space)
    code, out, err = _run(capsys, "predict", "--out-dir", str(out_dir), str(photo_path))
    assert code == 1
    (result,) = json.loads(out)  # printed whole before drawing
    assert result["file"] == str(photo_path) and result["detections"]
    assert err.strip() == f"error: {out_dir / 'photo.jpg'}: not written (No space left on device)"
    assert list(out_dir.iterdir()) == []  # no truncated image left


def test_tensorrt_onnx_folder_reading_outside_itself_is_exit_2(tmp_path, capsys):
    import shutil

    import onnx

    from dyhead_serve import zoo
    from dyhead_serve.cli.export import main as export_main

    source = Path(zoo.__file__).parent / "zoo_files" / "default"
    folder = tmp_path / "m"
    folder.mkdir()
    graph = onnx.load(str(source / "model.onnx"), load_external_data=False)
    tensor = next(t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    next(e for e in tensor.external_data if e.key == "location").value = "../../../../etc/passwd"
    onnx.save(graph, str(folder / "model.onnx"))
    shutil.copy(source / "model.json", folder / "model.json")
    code = export_main(["tensorrt", "--onnx", str(folder), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"reads its data from '../../../../etc/passwd', outside {folder}" in err
