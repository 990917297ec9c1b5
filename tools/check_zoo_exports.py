"""Which zoo models export to ONNX and pass the export's verification, as ``--backend auto``'s
export cache would export them: each model with its default config and random initial weights
(what can be exported depends on the graph, not on the weights), exported with the defaults of
``dyhead-export onnx`` and compared with PyTorch in ONNX Runtime on a 480x640 photo-like image.

    python tools/check_zoo_exports.py                          # every zoo model but the embedded one
    python tools/check_zoo_exports.py dyhead_r50_rcnn_fpn_1x   # some

Prints one line per model (exported and verified, or why not) and exits 1 when any failed.
Minutes per model on a CPU (Swin-L and Faster R-CNN the longest).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
import warnings

from dyhead_serve import zoo
from dyhead_serve.data.sample_image import synthetic_photo
from dyhead_serve.export.onnx_export import export_onnx
from dyhead_serve.export.verify import compare_backends, tolerances_for
from dyhead_serve.runtime.loader import load_torch_backend
from dyhead_serve.runtime.onnxruntime_backend import OnnxRuntimeBackend


def check(name: str) -> bool:
    """Export and verify one zoo model; print the outcome."""
    started = time.monotonic()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            backend = load_torch_backend(zoo.get_model(name).config_path, None, device="cpu", model_name=name)
            with tempfile.TemporaryDirectory() as out:
                export_onnx(backend, out)
                candidate = OnnxRuntimeBackend(out, device="cpu")
                report = compare_backends(
                    backend, candidate, synthetic_photo(480, 640), tolerances_for("fp32")
                )
    except Exception as exc:  # what failed is the answer: report it and go on with the next model
        traceback.print_exc()
        print(f"{name}: FAILED, {type(exc).__name__}: {exc} ({time.monotonic() - started:.0f} s)", flush=True)
        return False
    outcome = "exported and verified" if report.ok else "exported, verification FAILED"
    print(f"{name}: {outcome} ({time.monotonic() - started:.0f} s)", flush=True)
    if not report.ok:
        print(report.format(), flush=True)
    return report.ok


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="*", help="zoo names (default: all but the embedded default)")
    args = parser.parse_args()
    names = args.models or [name for name in zoo.ZOO if name != zoo.DEFAULT_MODEL]
    results = [check(name) for name in names]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
