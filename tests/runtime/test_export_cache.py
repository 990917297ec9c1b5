"""The export cache behind ``--backend auto``: its key, reuse, entries that are corrupt, partial or
of another key, failed exports, two first runs at once, and the loader's choice and fallback.

Most tests drive the cache with a recording stand-in for the ``dyhead-export onnx`` command line
that writes what that command writes (it says so: it is not an export); the tests at the end run
the real export of the tiny model end to end."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from dyhead_serve.model_source import resolve_model
from dyhead_serve.runtime import export_cache, loader
from dyhead_serve.runtime.export_cache import (
    ENTRY_FILE,
    ExportCacheError,
    OnnxExportCache,
    cached_engine,
    entry_problem,
    model_fingerprint,
    source_arguments,
)
from dyhead_serve.runtime.export_command import exporter_command
from dyhead_serve.runtime.loader import fastest_runtime, load_backend
from dyhead_serve.runtime.onnxruntime_backend import OnnxRuntimeBackend
from dyhead_serve.runtime.options import ModelOptions
from tests.conftest import TINY_OVERRIDES
from tests.hardware import needs_tensorrt

ATSS = "dyhead_r50_atss_fpn_1x"


class StandInExport:
    """Records each command line and writes model.onnx + model.json into its ``--out`` as
    ``dyhead-export onnx`` does (placeholder bytes, or ``copy_from``'s files: no export happens);
    a non-zero ``status`` writes nothing, like a failed export. ``log`` (a file) gets one line per
    call, across processes."""

    def __init__(
        self, status: int = 0, seconds: float = 0.0, log: Path | None = None, copy_from: Path | None = None
    ) -> None:
        self.status, self.seconds, self.log, self.copy_from = status, seconds, log, copy_from
        self.commands: list[list[str]] = []

    def __call__(self, command: Sequence[str]) -> int:
        self.commands.append(list(command))
        if self.log is not None:
            with self.log.open("a") as f:
                f.write("export\n")
        time.sleep(self.seconds)
        if self.status == 0:
            out = Path(command[command.index("--out") + 1])
            out.mkdir(parents=True)
            if self.copy_from is not None:  # a real folder's files (with its external weights)
                for name in ("model.onnx", "model.json", "model.safetensors"):
                    shutil.copy(self.copy_from / name, out / name)
            else:
                (out / "model.onnx").write_bytes(b"onnx graph")
                (out / "model.json").write_text("{}")
        return self.status


@pytest.fixture
def weights(placeholder_weights: Path) -> Path:
    return placeholder_weights


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own cache: a failed export's marker must not reach the next test."""
    monkeypatch.setenv("DYHEAD_SERVE_CACHE", str(tmp_path / "own-cache"))


def _source(weights: Path, overrides: Sequence[str] = ()):
    return resolve_model(ATSS, weights=str(weights), overrides=overrides)


def test_fingerprint_follows_weights_config_overrides_and_code(weights, tmp_path, monkeypatch):
    first = model_fingerprint(_source(weights))
    assert first == model_fingerprint(_source(weights))
    assert first["name"] == ATSS and set(first["packages"]) >= {"torch", "onnx", "onnxruntime"}
    changed = model_fingerprint(_source(weights, ["TEST.DETECTIONS_PER_IMAGE", "50"]))
    assert changed["config_sha256"] != first["config_sha256"] and changed["overrides"]
    # An override that leaves the resolved config as it was is still recorded.
    same = model_fingerprint(_source(weights, ["TEST.DETECTIONS_PER_IMAGE", "100"]))
    assert same["config_sha256"] == first["config_sha256"] and same != first
    monkeypatch.setattr(export_cache, "_code_digest", lambda: "edited")
    assert model_fingerprint(_source(weights))["code_sha256"] == "edited"
    monkeypatch.undo()
    weights.write_bytes(b"weights v2")
    assert model_fingerprint(_source(weights))["weights_sha256"] != first["weights_sha256"]


def test_datasets_and_training_keys_are_not_the_network(weights):
    """eval passes its datasets as overrides: they must not make another export."""
    first = model_fingerprint(_source(weights))
    eval_like = ["DATASETS.TEST", "('coco_2017_val',)", "OUTPUT_DIR", "out/x", "SOLVER.BASE_LR", "0.1"]
    assert model_fingerprint(_source(weights, eval_like)) == first
    assert model_fingerprint(_source(weights, [*eval_like, "MODEL.ATSS.NMS_TH", "0.5"])) != first


def test_fingerprint_resolves_the_config_through_its_base(weights, tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("MODEL:\n  META_ARCHITECTURE: ATSS\n")
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: base.yaml\nTEST:\n  DETECTIONS_PER_IMAGE: 50\n")
    source = resolve_model(config=str(child), weights=str(weights))
    before = model_fingerprint(source)
    base.write_text("MODEL:\n  META_ARCHITECTURE: ATSS\nINPUT:\n  MIN_SIZE_TEST: 640\n")
    assert model_fingerprint(source)["config_sha256"] != before["config_sha256"]
    assert source_arguments(source) == ("--config", str(child), "--weights", str(weights))


def test_source_arguments_name_the_model_as_the_command_line_does(weights):
    given = _source(weights, ["TEST.DETECTIONS_PER_IMAGE", "50"])
    assert source_arguments(given) == (
        "--model", ATSS, "--weights", str(weights), "--set", "TEST.DETECTIONS_PER_IMAGE", "50"
    )  # fmt: skip


def test_exports_once_then_reuses(weights, tmp_path):
    export = StandInExport()
    first = OnnxExportCache(_source(weights), tmp_path).export(run=export)
    assert first.how == "exported" and first.path.parent == tmp_path
    assert first.path.name.startswith(f"{ATSS}-") and (first.path / ENTRY_FILE).is_file()
    (command,) = export.commands
    exporter = exporter_command()
    assert command[: len(exporter) + 1] == [*exporter, "onnx"]
    assert command[len(exporter) + 1 : -1] == [
        "--model", ATSS, "--weights", str(weights), "--precision", "fp32", "--out"
    ]  # fmt: skip
    staging = Path(command[-1])
    assert staging.parent == tmp_path and staging.name.startswith(f".{first.path.name}.partial-")
    record = json.loads((first.path / ENTRY_FILE).read_text())
    assert set(record["files"]) == {"model.onnx", "model.json"}
    again = OnnxExportCache(_source(weights), tmp_path).export(run=export)
    assert (again.how, again.path) == ("reused", first.path) and len(export.commands) == 1
    # Other weights are another model: another entry.
    weights.write_bytes(b"weights v2")
    other = OnnxExportCache(_source(weights), tmp_path).export(run=export)
    assert other.how == "exported" and other.path != first.path


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda p: (p / "model.onnx").write_bytes(b"onnx grapH"), "model.onnx changed"),
        (lambda p: (p / "model.onnx").unlink(), "model.onnx changed"),
        (lambda p: (p / "extra.bin").write_bytes(b"x"), "extra.bin changed"),
        (lambda p: (p / ENTRY_FILE).unlink(), "did not finish"),
        (lambda p: (p / ENTRY_FILE).write_text("{not json"), "unreadable"),
        (lambda p: (p / ENTRY_FILE).write_text('{"key": "another"}'), "another key"),
    ],
)
def test_a_corrupt_or_partial_entry_is_exported_again(weights, tmp_path, caplog, damage, problem):
    export = StandInExport()
    entry = OnnxExportCache(_source(weights), tmp_path).export(run=export).path
    key = json.loads((entry / ENTRY_FILE).read_text())["key"]
    damage(entry)
    assert problem in str(entry_problem(entry, key))
    with caplog.at_level(logging.WARNING):
        again = OnnxExportCache(_source(weights), tmp_path).export(run=export)
    assert again.how == "exported" and len(export.commands) == 2
    assert entry_problem(again.path, key) is None
    assert "not to be trusted" in caplog.text and problem in caplog.text


def test_half_written_folders_of_a_run_that_died_are_removed(weights, tmp_path):
    export, root = StandInExport(), tmp_path / "cache"
    entry = OnnxExportCache(_source(weights), root).export(run=export).path
    shutil.rmtree(entry)
    died = root / f".{entry.name}.partial-otherhost-1-0123abcd"
    died.mkdir()
    (died / "model.onnx").write_bytes(b"half")
    old = time.time() - export_cache.ABANDONED_AFTER_S - 60
    os.utime(died, (old, old))
    # One that is young may be an export in progress on another host that shares the volume.
    running = root / f".{entry.name}.partial-otherhost-1-4567cdef"
    running.mkdir()
    OnnxExportCache(_source(weights), root).export(run=export)
    assert not died.exists() and running.is_dir()
    assert sorted(p.name for p in root.iterdir()) == [running.name, ".locks", entry.name]
    # Staging folders are named by host, process and a random part (replicas may share a PID).
    out = Path(export.commands[-1][export.commands[-1].index("--out") + 1])
    assert out.name.startswith(f".{entry.name}.partial-{socket.gethostname()}-{os.getpid()}-")


def test_a_link_or_a_folder_inside_an_entry_is_not_trusted(weights, tmp_path):
    entry = OnnxExportCache(_source(weights), tmp_path).export(run=StandInExport()).path
    key = json.loads((entry / ENTRY_FILE).read_text())["key"]
    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes((entry / "model.onnx").read_bytes())
    (entry / "model.onnx").unlink()
    (entry / "model.onnx").symlink_to(outside)  # the same bytes, through a link
    assert "model.onnx changed" in str(entry_problem(entry, key))
    (entry / "model.onnx").unlink()
    (entry / "model.onnx").write_bytes(outside.read_bytes())
    assert entry_problem(entry, key) is None
    (entry / "sub").mkdir()
    assert "sub changed" in str(entry_problem(entry, key))


def test_a_failed_export_is_remembered_not_retried(weights, tmp_path):
    failing = StandInExport(status=1)
    with pytest.raises(ExportCacheError, match="exit status 1; its output is above"):
        OnnxExportCache(_source(weights), tmp_path).export(run=failing)
    (marker,) = tmp_path.glob("*.failed")
    assert json.loads(marker.read_text())["exit_status"] == 1
    assert not [p for p in tmp_path.iterdir() if p.is_dir() and p.name != ".locks"]  # nothing cached
    with pytest.raises(ExportCacheError, match=f"not tried again; delete {marker}"):
        OnnxExportCache(_source(weights), tmp_path).export(run=failing)
    assert len(failing.commands) == 1
    # Asked explicitly (--backend onnxruntime), it is tried again; success clears the marker.
    working = StandInExport()
    OnnxExportCache(_source(weights), tmp_path).export(run=working, retry_failed=True)
    assert len(working.commands) == 1 and not marker.exists()


@pytest.mark.parametrize("status", [-9, -15, 137, 139])
def test_a_killed_or_crashed_export_is_not_remembered(weights, tmp_path, status):
    """The OOM killer, a stop or a crash may not happen again: no marker, the next run exports."""
    with pytest.raises(ExportCacheError, match=f"exit status {status}"):
        OnnxExportCache(_source(weights), tmp_path).export(run=StandInExport(status=status))
    assert not list(tmp_path.glob("*.failed"))
    working = StandInExport()
    assert OnnxExportCache(_source(weights), tmp_path).export(run=working).how == "exported"


def test_a_file_system_without_locks_is_an_export_cache_error(weights, tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(ExportCacheError, match="does not support locks; point DYHEAD_SERVE_CACHE"):
        OnnxExportCache(_source(weights), tmp_path).export(run=StandInExport())


def test_a_cache_that_cannot_be_written_is_an_export_cache_error(weights, tmp_path):
    root = tmp_path / "afile"
    root.write_text("")  # the cache folder's place is taken by a file
    with pytest.raises(ExportCacheError, match="cannot be written"):
        OnnxExportCache(_source(weights), root / "onnx").export(run=StandInExport())


def _first_run(root: str, weights: str, log: str, results: multiprocessing.Queue) -> None:
    source = resolve_model(ATSS, weights=weights)
    entry = OnnxExportCache(source, Path(root)).export(run=StandInExport(seconds=1.0, log=Path(log)))
    results.put((entry.how, str(entry.path)))


def test_two_first_runs_at_once_export_once(weights, tmp_path):
    """Two processes (two server workers) start on an empty cache: one exports, the other waits
    on the lock and reuses what it exported."""
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue = context.Queue()
    log = tmp_path / "exports.log"
    args = (str(tmp_path / "cache"), str(weights), str(log), results)
    workers = [context.Process(target=_first_run, args=args) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    outcomes = sorted(results.get(timeout=5) for _ in workers)
    assert [how for how, _ in outcomes] == ["exported", "reused"]
    assert outcomes[0][1] == outcomes[1][1]
    assert log.read_text() == "export\n"


def test_the_engine_cache_command_and_its_failures(weights, monkeypatch):
    monkeypatch.delenv("DYHEAD_ENGINE_PRECISION", raising=False)
    calls: list[list[str]] = []

    def stand_in(command: Sequence[str]) -> tuple[int, str]:
        """Records the command line; prints a folder without model.plan (not an engine)."""
        calls.append(list(command))
        return 0, "/nonexistent/engine\n"

    with pytest.raises(ExportCacheError, match="found or built no engine"):
        cached_engine(_source(weights), 4, run=stand_in)
    exporter = exporter_command()
    assert calls == [[*exporter, "engine", "--model", ATSS, "--weights", str(weights), "--max-batch", "4"]]
    with pytest.raises(ExportCacheError, match="exit status 3"):
        cached_engine(_source(weights), run=lambda command: (3, ""))
    # predict and eval (no batch size): one image; beyond the largest preset, 8 (run in chunks);
    # the GPU image's precision variable counts here too.
    monkeypatch.setenv("DYHEAD_ENGINE_PRECISION", "fp32")
    for max_batch, expected in ((None, "1"), (16, "8")):
        with pytest.raises(ExportCacheError):
            cached_engine(_source(weights), max_batch, run=stand_in)
        assert calls[-1][-4:] == ["--max-batch", expected, "--precision", "fp32"]


def test_the_exporter_runs_where_stderr_is_no_file(monkeypatch):
    """In a notebook, or under a test's capture, sys.stderr has no file descriptor: the child
    writes to the process's own stderr instead of failing (it raised io.UnsupportedOperation)."""
    import io

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert export_cache.run_exporter([sys.executable, "-c", "print('progress')"]) == 0


def test_fastest_runtime_per_host(monkeypatch):
    import importlib.util

    assert fastest_runtime("cpu") == ("onnxruntime", "")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "onnxruntime" else real_find_spec(name)
    )
    runtime, why = fastest_runtime("cpu")
    assert runtime == "torch" and "onnxruntime is not installed" in why
    monkeypatch.setattr(loader, "resolve_torch_device", lambda device: "cuda")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    runtime, why = fastest_runtime("auto")
    assert runtime == "torch" and "without TensorRT" in why
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert fastest_runtime("auto") == ("tensorrt", "")


def test_auto_falls_back_to_torch_with_one_line_naming_why(weights, tiny_weights, monkeypatch, caplog):
    monkeypatch.setattr(export_cache, "run_exporter", StandInExport(status=1))
    options = ModelOptions(config=ATSS, weights=tiny_weights, overrides=tuple(TINY_OVERRIDES), device="cpu")
    with caplog.at_level(logging.WARNING, logger="dyhead_serve.runtime"):
        backend = load_backend(options)
    assert backend.name == "torch"
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("auto:")]
    assert "runs in torch, not onnxruntime" in line and "exit status 1" in line


@pytest.mark.parametrize("status", [1, 2])
def test_auto_falls_back_whatever_the_export_failure(tiny_weights, monkeypatch, caplog, status):
    """Exit status 2 is `error: ...` in the child: a graph that fails its checks, a full disk. The
    model itself loaded here first, so it serves in torch."""
    monkeypatch.setattr(export_cache, "run_exporter", StandInExport(status=status))
    options = ModelOptions(config=ATSS, weights=tiny_weights, overrides=tuple(TINY_OVERRIDES), device="cpu")
    with caplog.at_level(logging.WARNING, logger="dyhead_serve.runtime"):
        assert load_backend(options).name == "torch"
    assert f"exit status {status}" in caplog.text


def test_auto_falls_back_where_the_cache_cannot_be_locked(tiny_weights, monkeypatch, caplog):
    import errno
    import fcntl

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    options = ModelOptions(config=ATSS, weights=tiny_weights, overrides=tuple(TINY_OVERRIDES), device="cpu")
    with caplog.at_level(logging.WARNING, logger="dyhead_serve.runtime"):
        assert load_backend(options).name == "torch"
    assert "does not support locks" in caplog.text


def test_a_read_only_cache_with_the_entry_serves(tiny_weights, tmp_path, monkeypatch):
    """A volume mounted read-only with the export already in it: found and served without
    writing anything (the cache folder's write probe came first and sent it to torch)."""
    monkeypatch.setenv("DYHEAD_SERVE_CACHE", str(tmp_path))
    source = resolve_model(config=ATSS, weights=str(tiny_weights), overrides=TINY_OVERRIDES)
    shipped = resolve_model().weights.parent  # a real graph to put in the entry: the embedded model's
    entry = OnnxExportCache(source, tmp_path / "onnx").export(run=StandInExport(copy_from=shipped)).path
    from dyhead_serve.checkpoint import cache as cache_module

    def no_writing(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cache that holds the entry must not be written")

    monkeypatch.setattr(cache_module, "cache_folder", no_writing)
    monkeypatch.setattr(OnnxExportCache, "_export_locked", no_writing)
    options = ModelOptions(config=ATSS, weights=tiny_weights, overrides=tuple(TINY_OVERRIDES), device="cpu")
    backend = load_backend(options)
    assert isinstance(backend, OnnxRuntimeBackend) and backend.model_dir == entry


def test_backend_torch_forces_torch(tiny_weights, monkeypatch):
    def no_export(command: Sequence[str]) -> int:
        raise AssertionError("--backend torch must not export")

    monkeypatch.setattr(export_cache, "run_exporter", no_export)
    options = ModelOptions(
        config=ATSS, weights=tiny_weights, overrides=tuple(TINY_OVERRIDES), backend="torch", device="cpu"
    )
    assert load_backend(options).name == "torch"


def test_an_explicit_runtime_fails_rather_than_falls_back(tiny_weights, monkeypatch):
    monkeypatch.setattr(export_cache, "run_exporter", StandInExport(status=1))
    options = ModelOptions(
        config=ATSS,
        weights=tiny_weights,
        overrides=tuple(TINY_OVERRIDES),
        backend="onnxruntime",
        device="cpu",
    )
    with pytest.raises(ExportCacheError, match="exit status 1"):
        load_backend(options)


def test_auto_exports_once_then_runs_onnxruntime_like_torch(tiny_weights, photo_path, tmp_path, monkeypatch):
    """The real thing, on the tiny model: the first load exports (a child `dyhead-export onnx`,
    verified against PyTorch), the second only checks the entry; detections as torch's, within the
    export's verification tolerances."""
    from dyhead_serve.export.verify import compare_backends
    from dyhead_serve.pipeline.image_io import read_image

    monkeypatch.setenv("DYHEAD_SERVE_CACHE", str(tmp_path))
    options = ModelOptions(config=ATSS, weights=tiny_weights, overrides=tuple(TINY_OVERRIDES), device="cpu")
    first = load_backend(options)
    assert first.name == "onnxruntime"
    (entry,) = [p for p in (tmp_path / "onnx").iterdir() if p.is_dir() and p.name != ".locks"]
    assert entry_problem(entry, json.loads((entry / ENTRY_FILE).read_text())["key"]) is None

    def no_export(command: Sequence[str]) -> int:
        raise AssertionError("the second run must reuse the cached export")

    monkeypatch.setattr(export_cache, "run_exporter", no_export)
    second = load_backend(options)
    assert second.name == "onnxruntime"
    torch_backend = load_backend(ModelOptions(**{**options.__dict__, "backend": "torch"}))
    report = compare_backends(torch_backend, second, read_image(photo_path))
    assert report.ok, report.format()


def test_a_model_that_does_not_load_fails_with_its_own_error_before_any_export(weights, monkeypatch):
    """auto builds the PyTorch model before a first export: a checkpoint that is no checkpoint
    fails there, with the checkpoint's error, and nothing is exported or remembered."""
    from dyhead_serve.checkpoint import CheckpointError

    def no_export(command: Sequence[str]) -> int:
        raise AssertionError("a model that does not load must not be exported")

    monkeypatch.setattr(export_cache, "run_exporter", no_export)
    with pytest.raises(CheckpointError):
        load_backend(ModelOptions(config=ATSS, weights=weights, device="cpu"))


def test_lookup_finds_only_a_complete_entry(weights, tmp_path):
    cache = OnnxExportCache(_source(weights), tmp_path)
    assert cache.lookup() is None
    made = cache.export(run=StandInExport())
    assert cache.lookup() == export_cache.CachedExport(made.path, "reused")
    (made.path / ENTRY_FILE).unlink()
    assert cache.lookup() is None


def test_the_server_runs_a_named_model_from_the_export_cache(tmp_path, monkeypatch):
    """serve (and the Ray Serve app, which loads through the same settings) with the default
    model named by its weights file: a real export on first load, ONNX Runtime from the cache."""
    pytest.importorskip("pydantic_settings", reason="the server's settings need the serve extra")
    from dyhead_serve.server.service import load_backend_from_settings
    from dyhead_serve.server.settings import ServerSettings
    from dyhead_serve.zoo import DEFAULT_MODEL, get_model, weights_path

    monkeypatch.setenv("DYHEAD_SERVE_CACHE", str(tmp_path))
    weights_file = weights_path(get_model(DEFAULT_MODEL))
    settings = ServerSettings(model=DEFAULT_MODEL, weights=str(weights_file), device="cpu")
    backend = load_backend_from_settings(settings)
    assert isinstance(backend, OnnxRuntimeBackend)
    (entry,) = [p for p in (tmp_path / "onnx").iterdir() if p.name.startswith(f"{DEFAULT_MODEL}-")]
    assert backend.model_dir == entry


def test_auto_on_a_gpu_host_with_tensorrt_asks_the_engine_cache_first(tiny_weights, monkeypatch, caplog):
    """A recording stand-in for the `dyhead-export engine` child (no engine is built here): auto
    asks the engine cache for the model with the server's batch size, and when no engine comes back
    runs torch with one line saying why."""
    calls: list[list[str]] = []

    def stand_in(command: Sequence[str]) -> tuple[int, str]:
        calls.append(list(command))
        return 1, ""

    monkeypatch.setattr(loader, "fastest_runtime", lambda device: ("tensorrt", ""))
    monkeypatch.setattr(export_cache, "capture_exporter", stand_in)
    options = ModelOptions(
        config=ATSS, weights=tiny_weights, overrides=tuple(TINY_OVERRIDES), device="cpu", max_batch=4
    )
    with caplog.at_level(logging.WARNING, logger="dyhead_serve.runtime"):
        assert load_backend(options).name == "torch"
    (command,) = calls
    assert command[len(exporter_command()) :][:5] == [
        "engine",
        "--config",
        ATSS,
        "--weights",
        str(tiny_weights),
    ]
    assert command[-2:] == ["--max-batch", "4"]
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("auto:")]
    assert "runs in torch, not tensorrt" in line and "exit status 1" in line


@needs_tensorrt
@pytest.mark.slow
def test_auto_on_a_gpu_host_builds_the_engine_once_then_reuses_it(tmp_path, monkeypatch):
    """The real thing where TensorRT and a GPU are: the default model named by its weights file
    gets an engine built into the engine cache on first load, found there on the second."""
    from dyhead_serve.runtime.tensorrt_backend import TensorRTBackend
    from dyhead_serve.zoo import DEFAULT_MODEL, get_model, weights_path

    monkeypatch.setenv("DYHEAD_SERVE_CACHE", str(tmp_path))
    options = ModelOptions(DEFAULT_MODEL, weights=str(weights_path(get_model(DEFAULT_MODEL))), max_batch=1)
    first = load_backend(options)
    assert isinstance(first, TensorRTBackend)
    (engine_dir,) = [p.parent for p in (tmp_path / "engines").glob("*/*/model.plan")]
    assert first.model_dir == engine_dir
    second = load_backend(options)
    assert isinstance(second, TensorRTBackend) and second.model_dir == engine_dir
