"""Replace the embedded default model with a trained checkpoint, in one step.

    python tools/ship_default_model.py output/default/model_final.pth

1. writes the checkpoint's ``model`` state dict (nothing else: no optimizer, no scheduler) to
   ``dyhead_serve/zoo_files/default/model_final.pth``;
2. sets ``DEFAULT_SHA256`` in ``dyhead_serve/zoo.py`` to that file's sha256;
3. re-exports the ONNX model beside it (``dyhead-export onnx --model default``, verified in
   ONNX Runtime against PyTorch on a newly generated shapes image, so that the comparison covers
   detections), so that ``model.json`` records the same sha256.

Then run ``dyhead-serve eval --model default`` and put its numbers in README.md.
``tests/test_default_model.py`` checks that weights, zoo and export agree.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from dyhead_serve.cli import exporter_command
from dyhead_serve.data.synthetic import generate_synthetic_dataset
from dyhead_serve.zoo import sha256_of

ROOT = Path(__file__).resolve().parent.parent
_SHA_LINE = re.compile(r'^DEFAULT_SHA256 = "[0-9a-f]*"$', re.MULTILINE)


def write_weights(checkpoint: Path, target: Path) -> str:
    """Save ``checkpoint``'s model state dict to ``target``; returns the file's sha256."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise SystemExit(f"{checkpoint}: not a training checkpoint (no 'model' state dict)")
    torch.save({"model": state["model"]}, target)
    return sha256_of(target)


def set_default_sha256(zoo_py: Path, sha256: str) -> None:
    """Rewrite the ``DEFAULT_SHA256 = "..."`` line of ``zoo_py``."""
    text = zoo_py.read_text()
    new, count = _SHA_LINE.subn(f'DEFAULT_SHA256 = "{sha256}"', text)
    if count != 1:
        raise SystemExit(f"{zoo_py}: expected one DEFAULT_SHA256 line, found {count}")
    zoo_py.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path, help="a checkpoint written by `dyhead-serve train`")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this one)")
    parser.add_argument("--no-export", action="store_true", help="skip step 3 (the ONNX export)")
    args = parser.parse_args(argv)

    folder = args.root / "dyhead_serve" / "zoo_files" / "default"
    sha256 = write_weights(args.checkpoint, folder / "model_final.pth")
    set_default_sha256(args.root / "dyhead_serve" / "zoo.py", sha256)
    print(f"weights: {folder / 'model_final.pth'} (sha256 {sha256})")
    if args.no_export:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        shapes = generate_synthetic_dataset(Path(tmp), num_train=0, num_val=1, image_size=320, seed=1)
        (image,) = shapes.image_root("val").glob("*.png")
        # A new process, so that it imports the updated DEFAULT_SHA256.
        export = [
            *exporter_command(),
            "onnx",
            "--model",
            "default",
            "--out",
            str(folder),
            "--verify-image",
            str(image),
        ]
        return subprocess.run(export, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
