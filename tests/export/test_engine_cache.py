"""The engine cache behind the GPU image's entrypoint (`dyhead-export engine`): keys, reuse, one
build per key among concurrent starts, nothing cached from a failed build, mounted engines.

The cache logic runs here with a stand-in for the `dyhead-export tensorrt` command line that writes
what that command writes; the real build runs in the `tensorrt`-marked test at the end."""

from __future__ import annotations

import importlib.util
import runpy
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from dyhead_serve.export.engine_cache import (
    BuildSource,
    BuildTarget,
    EngineCacheError,
    engine_key,
    find_or_build,
    mounted_engine,
    profile_for_batch,
    resolve_source,
)
from dyhead_serve.pipeline.preprocess import InputSpec
from dyhead_serve.runtime.artifact import ModelArtifact
from dyhead_serve.runtime.export_command import exporter_command, override_flags
from dyhead_serve.runtime.tensorrt_compat import ENGINE_KEY
from tests.conftest import TINY_OVERRIDES, one_class_dense_decoder
from tests.hardware import needs_tensorrt

H100 = BuildTarget("10.11.0.33", "NVIDIA H100 80GB HBM3", "9.0", "fp16", "coco-batch4")
REPO = Path(__file__).resolve().parents[2]


def _artifact(engine: dict | None = None) -> ModelArtifact:
    spec = InputSpec("BGR", (103.53, 116.28, 123.675), (1.0, 1.0, 1.0), 800, 1333, 128)
    provenance = {ENGINE_KEY: engine} if engine is not None else {}
    return ModelArtifact("m", spec, ["a"], one_class_dense_decoder(), provenance=provenance)


def _engine_record(target: BuildTarget = H100, max_batch: int = 4) -> dict:
    return {
        "tensorrt": target.tensorrt,
        "gpu": target.gpu,
        "compute_capability": target.compute_capability,
        "precision": target.precision,
        "profile": {"min": [1, 3, 128, 128], "opt": [1, 3, 896, 1408], "max": [max_batch, 3, 1408, 1408]},
    }


class StandInBuild:
    """Records the command lines and writes model.plan + model.json into --out, as
    `dyhead-export tensorrt` does; ``status`` != 0 writes nothing, like a failed build."""

    def __init__(self, status: int = 0, seconds: float = 0.0) -> None:
        self.status, self.seconds = status, seconds
        self.commands: list[list[str]] = []

    def __call__(self, command: Sequence[str]) -> int:
        self.commands.append(list(command))
        time.sleep(self.seconds)
        if self.status == 0:
            out = Path(command[command.index("--out") + 1])
            out.mkdir(parents=True)
            (out / "model.plan").write_bytes(b"plan")
            _artifact(_engine_record()).save(out / "model.json")
        return self.status


@pytest.fixture
def weights(placeholder_weights: Path) -> Path:
    return placeholder_weights


def test_key_names_model_tensorrt_gpu_precision_and_profile(weights):
    source = resolve_source("dyhead_r50_atss_fpn_1x", weights=str(weights))
    key = engine_key(source, H100)
    assert key.parts[0] == f"dyhead_r50_atss_fpn_1x-{source.model_id[:16]}"
    assert key.parts[1] == "trt10.11.0.33-nvidia-h100-80gb-hbm3-sm90-fp16-coco-batch4"
    other = BuildTarget("10.11.0.33", "NVIDIA L4", "8.9", "fp16", "coco-batch4")
    assert engine_key(source, other).parts[1] == "trt10.11.0.33-nvidia-l4-sm89-fp16-coco-batch4"


def test_model_id_follows_weights_and_overrides(weights, tmp_path):
    first = resolve_source("dyhead_r50_atss_fpn_1x", weights=str(weights))
    assert first == resolve_source("dyhead_r50_atss_fpn_1x", weights=str(weights))
    assert first.build_args == ("--model", "dyhead_r50_atss_fpn_1x", "--weights", str(weights))
    changed = resolve_source(
        "dyhead_r50_atss_fpn_1x", weights=str(weights), overrides=["TEST.DETECTIONS_PER_IMAGE", "50"]
    )
    assert changed.model_id != first.model_id and changed.build_args[-3:] == (
        "--set",
        "TEST.DETECTIONS_PER_IMAGE",
        "50",
    )
    weights.write_bytes(b"weights v2")
    assert resolve_source("dyhead_r50_atss_fpn_1x", weights=str(weights)).model_id != first.model_id


def test_sources_from_a_config_and_from_an_onnx_folder(weights, tmp_path):
    config = resolve_source(config="dyhead_r50_atss_fpn_1x", weights=str(weights))
    assert config.build_args == ("--config", "dyhead_r50_atss_fpn_1x", "--weights", str(weights))
    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"onnx")
    _artifact().save(folder / "model.json")
    onnx = resolve_source(str(folder))
    assert (onnx.label, onnx.build_args) == ("exported", ("--onnx", str(folder)))
    with pytest.raises(EngineCacheError, match="needs --weights"):
        resolve_source(config="dyhead_r50_atss_fpn_1x")
    with pytest.raises(EngineCacheError, match=r"no model\.onnx"):
        resolve_source(str(tmp_path))
    with pytest.raises(EngineCacheError, match="unknown model"):
        resolve_source("no_such_model", weights=str(weights))


def test_profile_covers_the_servers_batch():
    assert [profile_for_batch(n) for n in (1, 2, 4, 5, 8)] == [
        "coco", "coco-batch4", "coco-batch4", "coco-batch8", "coco-batch8"
    ]  # fmt: skip
    assert profile_for_batch(4, "coco-batch8") == "coco-batch8"
    with pytest.raises(EngineCacheError, match="at most 1 images"):
        profile_for_batch(4, "coco")
    with pytest.raises(EngineCacheError, match="no shape preset"):
        profile_for_batch(16)


def test_builds_once_then_reuses(weights, tmp_path):
    source = resolve_source("dyhead_r50_atss_fpn_1x", weights=str(weights))
    build = StandInBuild()
    first = find_or_build(source, H100, tmp_path / "engines", run=build)
    assert first.how == "built" and first.path == tmp_path / "engines" / engine_key(source, H100)
    assert (first.path / "model.plan").is_file() and (first.path / "engine_key.json").is_file()
    (command,) = build.commands
    exporter = exporter_command()
    assert command[: len(exporter) + 1] == [*exporter, "tensorrt"]
    assert Path(exporter[0]).name in ("dyhead-export", Path(sys.executable).name)
    command = command[len(exporter) + 1 :]
    assert command[:4] == ["--model", "dyhead_r50_atss_fpn_1x", "--weights", str(weights)]
    assert command[command.index("--profile") + 1] == "coco-batch4" and "--fp16" in command
    assert Path(command[command.index("--out") + 1]).parent == first.path.parent  # renamed into place

    again = find_or_build(source, H100, tmp_path / "engines", run=build)
    assert (again.how, again.path, len(build.commands)) == ("reused", first.path, 1)
    fp32 = BuildTarget(H100.tensorrt, H100.gpu, H100.compute_capability, "fp32", H100.profile)
    assert find_or_build(source, fp32, tmp_path / "engines", run=build).how == "built"
    assert "--fp16" not in build.commands[-1]


def test_a_failed_build_caches_nothing(weights, tmp_path):
    source = resolve_source("dyhead_r50_atss_fpn_1x", weights=str(weights))
    with pytest.raises(EngineCacheError, match=r"exit status 1.*nothing was cached"):
        find_or_build(source, H100, tmp_path / "engines", run=StandInBuild(status=1))
    model_dir = tmp_path / "engines" / engine_key(source, H100).parent
    assert not any(model_dir.iterdir())  # neither the engine nor its half-built folder
    assert find_or_build(source, H100, tmp_path / "engines", run=StandInBuild()).how == "built"


def test_concurrent_starts_build_once(tmp_path):
    """Replicas sharing the cache volume: one builds, the others wait and reuse its engine."""
    source = BuildSource("m", "0" * 64, ("--onnx", "x"))
    build = StandInBuild(seconds=0.3)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(find_or_build(source, H100, tmp_path, run=build)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(build.commands) == 1
    assert sorted(r.how for r in results) == ["built", "reused", "reused"]
    assert len({r.path for r in results}) == 1


def test_mounted_engine_is_used_when_it_fits_this_machine(tmp_path):
    folder = tmp_path / "mounted"
    folder.mkdir()
    (folder / "model.plan").write_bytes(b"plan")
    _artifact(_engine_record()).save(folder / "model.json")
    result, precision = mounted_engine(folder, H100, max_batch=4)
    assert (result.how, result.path, precision) == ("mounted", folder, "fp16")
    with pytest.raises(EngineCacheError, match="at most 4 images"):
        mounted_engine(folder, H100, max_batch=8)

    l4 = BuildTarget("10.11.0.33", "NVIDIA L4", "8.9", "fp16", "coco-batch4")
    with pytest.raises(EngineCacheError, match="rebuild"):
        mounted_engine(folder, l4, max_batch=4)  # another GPU and nothing to build from
    (folder / "model.onnx").write_bytes(b"onnx")
    assert mounted_engine(folder, l4, max_batch=4) is None  # built from its model.onnx instead
    assert mounted_engine(tmp_path, H100, max_batch=4) is None  # no engine at all


def test_a_mounted_fixed_batch_engine_serves_any_server_batch(tmp_path):
    """A Faster R-CNN engine takes batches of 1 (its graph's); the backend runs larger server
    batches in chunks of 1, so a server batch of 4 is no reason to refuse it."""
    folder = tmp_path / "rcnn"
    folder.mkdir()
    (folder / "model.plan").write_bytes(b"plan")
    _artifact({**_engine_record(max_batch=1), "fixed_batch": 1}).save(folder / "model.json")
    result, _ = mounted_engine(folder, H100, max_batch=4)
    assert result.how == "mounted"


def test_engine_command_without_tensorrt_is_a_one_line_error(monkeypatch, capsys):
    """Run as `python -m dyhead_serve.cli.export`: errors raised by subcommand modules must still be
    one line, not a traceback."""
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    monkeypatch.setattr(sys, "argv", ["dyhead-export", "engine", "--model", "dyhead_r50_atss_fpn_1x"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("dyhead_serve.cli.export", run_name="__main__")
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: TensorRT is not installed") and captured.err.count("\n") == 1
    assert captured.out == ""


@pytest.mark.tensorrt
@needs_tensorrt
def test_real_build_then_reuse(tiny_weights, tmp_path):
    overrides = override_flags(TINY_OVERRIDES)
    command = [
        *exporter_command(), "engine", "--config", "dyhead_r50_atss_fpn_1x",
        "--weights", str(tiny_weights), *overrides, "--profile", "small", "--max-batch", "2",
        "--precision", "fp32", "--cache", str(tmp_path),
    ]  # fmt: skip
    first = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=1800, check=False)
    assert first.returncode == 0, first.stderr
    engine = Path(first.stdout.strip())
    assert (engine / "model.plan").is_file() and "built in" in first.stderr
    second = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
    assert second.returncode == 0 and Path(second.stdout.strip()) == engine
    assert "engine reused" in second.stderr and "TensorRT" in second.stderr


def _exported_graph(folder, float16: bool):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    dtype = np.float16 if float16 else np.float32
    scale = numpy_helper.from_array(np.ones((1,), dtype), "scale")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Mul", ["images", "scale"], ["out"])], "g",
        [onnx.helper.make_tensor_value_info("images", scale.data_type, [1, 3, 128, 128])],
        [onnx.helper.make_tensor_value_info("out", scale.data_type, [1, 3, 128, 128])],
        [scale],
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(onnx.helper.make_model(graph), str(folder / "model.onnx"))
    return BuildSource("m", "0" * 64, ("--onnx", str(folder)))


def test_exported_folder_precision_against_the_engine_asked(tmp_path):
    """Before anything is built. A float32 folder gives an fp16 engine on every TensorRT (the
    tensorrt command writes its float16 twin into the build folder first when the build is strongly
    typed); a float16 folder never gives an fp32 engine (its weights are already rounded)."""
    from dyhead_serve.export.engine_cache import EngineCacheError, check_source_precision

    float32 = _exported_graph(tmp_path / "fp32", float16=False)
    strongly_typed_fp16 = BuildTarget("11.4.0.1", H100.gpu, H100.compute_capability, "fp16", H100.profile)
    check_source_precision(float32, strongly_typed_fp16)
    check_source_precision(float32, H100)  # 10.11, fp16
    check_source_precision(float32, BuildTarget("11.4.0.1", "g", "9.0", "fp32", "coco"))

    float16 = _exported_graph(tmp_path / "fp16", float16=True)
    check_source_precision(float16, strongly_typed_fp16)
    build = StandInBuild()
    fp32_target = BuildTarget("11.4.0.1", H100.gpu, H100.compute_capability, "fp32", H100.profile)
    with pytest.raises(EngineCacheError, match=r"float16 graph: an fp32 engine needs the float32 ONNX"):
        find_or_build(float16, fp32_target, tmp_path / "cache", run=build)
    assert build.commands == []
