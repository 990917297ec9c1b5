"""``dyhead-serve predict --model NAME --weights W`` on a CPU host: the first run exports the model
into the cache with a progress bar, the second runs ONNX Runtime without exporting, and both give
torch's detections within the export's verification tolerances. The model is the default one
named with its weights file (so not its shipped ONNX graph): a real export, in seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dyhead_serve.export.verify import Tolerances
from dyhead_serve.zoo import DEFAULT_MODEL, get_model, weights_path

SHAPES = Path(__file__).resolve().parents[2] / "examples" / "shapes.jpg"


def _predict(cache, *args: str) -> tuple[list[dict], str]:
    """One run of `dyhead-serve predict` in a process of its own (logging at INFO)."""
    command = [
        sys.executable,
        "-m",
        "dyhead_serve.cli",
        "predict",
        "--device",
        "cpu",
        "--score-threshold",
        "0.3",
    ]
    env = {**os.environ, "DYHEAD_SERVE_CACHE": str(cache)}
    run = subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert run.returncode == 0, run.stderr
    (result,) = json.loads(run.stdout)
    return result["detections"], run.stderr


def _same_detections(reference: list[dict], candidate: list[dict], tol: Tolerances) -> bool:
    if len(reference) != len(candidate):
        return False
    unmatched = list(candidate)
    for det in reference:
        for other in unmatched:
            close_box = max(abs(a - b) for a, b in zip(det["box"], other["box"], strict=True)) <= tol.box_px
            if (
                other["class_id"] == det["class_id"]
                and close_box
                and abs(other["score"] - det["score"]) <= tol.score
            ):
                unmatched.remove(other)
                break
        else:
            return False
    return True


def test_second_run_uses_the_cached_onnx_export(tmp_path):
    cache = tmp_path / "cache"
    weights = weights_path(get_model(DEFAULT_MODEL))
    model = ["--model", DEFAULT_MODEL, "--weights", str(weights), str(SHAPES)]
    first, err = _predict(cache, *model)
    assert "exporting it to ONNX" in err and "export: " in err  # the export's progress bar
    assert "verification (model.onnx, fp32" in err and f"exported {DEFAULT_MODEL} to ONNX in" in err
    (entry,) = [p for p in (cache / "onnx").iterdir() if p.name.startswith(f"{DEFAULT_MODEL}-")]
    second, err = _predict(cache, *model)
    assert "exporting" not in err and "export: " not in err
    assert f"ONNX Runtime session for {entry / 'model.onnx'}" in err
    reference, _ = _predict(cache, "--backend", "torch", *model)
    assert len(reference) >= 5, "the default model finds the shapes"
    assert first == second
    assert _same_detections(reference, second, Tolerances())
