"""Serving an exported model needs the decode layer, never the detector stack: loading the embedded
default model's folder in ONNX Runtime and running one image imports nothing of
``dyhead_serve.modeling`` (DyHead, backbones, losses) or ``dyhead_serve.ops``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FOLDER = ROOT / "dyhead_serve" / "zoo_files" / "default"

# Run in a fresh interpreter: the test process itself has imported modeling long before.
SCRIPT = """
import json, sys
import numpy as np
from dyhead_serve.data.synthetic import render_image
from dyhead_serve.runtime.base import make_predictor
from dyhead_serve.runtime.loader import load_backend
from dyhead_serve.runtime.options import ModelOptions

backend = load_backend(ModelOptions(sys.argv[1], backend="onnxruntime", device="cpu", threads=1))
image, _ = render_image(np.random.default_rng(7), 320, 256)  # shapes the default model finds
detections = make_predictor(backend)(image)
print(json.dumps({
    "backend": backend.name,
    "detections": len(detections),
    "modules": sorted(m for m in sys.modules if m.startswith("dyhead_serve")),
}))
"""


def test_serving_an_exported_model_imports_no_modeling_or_ops() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(DEFAULT_FOLDER)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backend"] == "onnxruntime" and report["detections"] > 0
    forbidden = [m for m in report["modules"] if m.startswith(("dyhead_serve.modeling", "dyhead_serve.ops"))]
    assert forbidden == [], f"serving an exported model imported {forbidden}"
    assert "dyhead_serve.decode" in report["modules"]  # the decoder did run
