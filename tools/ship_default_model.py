"""Replace the embedded default model with a trained checkpoint, in one step.

    python tools/ship_default_model.py output/default_model/model_final.pth

1. loads the checkpoint's ``model`` state dict strictly into the default model's architecture
   (``dyhead_serve/zoo_files/default/config.yaml``) and writes it (nothing else: no optimizer,
   no scheduler) to ``dyhead_serve/zoo_files/default/model.safetensors``;
2. sets ``DEFAULT_SHA256`` in ``dyhead_serve/zoo.py`` to that file's sha256;
3. re-exports the ONNX model beside it (``dyhead-export onnx --model default
   --external-weights``, verified in ONNX Runtime against PyTorch on a newly generated shapes
   image), whose initializers read their bytes from ``model.safetensors``: the weights are
   stored once in the package, and ``model.json`` records the same sha256.

Then run ``dyhead-serve eval --model default`` and put its numbers in docs/training.md.
``tests/test_default_model.py`` checks that weights, zoo and export agree.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import dyhead_serve
from dyhead_serve.checkpoint import CheckpointError, sha256_of
from dyhead_serve.config import ConfigError
from dyhead_serve.data.synthetic import generate_synthetic_dataset
from dyhead_serve.export.external_weights import WEIGHTS_FILE, write_weights_file
from dyhead_serve.runtime.export_command import exporter_command
from dyhead_serve.runtime.loader import load_torch_backend

ROOT = Path(__file__).resolve().parent.parent
_SHA_LINE = re.compile(r'^DEFAULT_SHA256 = "[0-9a-f]*"$', re.MULTILINE)


def write_weights(checkpoint: Path, config: Path, target: Path) -> str:
    """Load ``checkpoint``'s model into the architecture of ``config`` (strictly) and write its
    state dict to ``target`` as the export will; returns the file's sha256."""
    try:
        if "model" not in _top_level_keys(checkpoint):
            raise SystemExit(f"{checkpoint}: not a training checkpoint (no 'model' state dict)")
        backend = load_torch_backend(config, checkpoint, device="cpu")
    except (CheckpointError, ConfigError) as exc:
        raise SystemExit(f"{checkpoint}: {exc}") from exc
    write_weights_file(backend.model.state_dict(), target)
    return sha256_of(target)


def _top_level_keys(checkpoint: Path) -> list[str]:
    import torch

    try:
        contents = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure to read it is a bad file
        raise SystemExit(f"{checkpoint}: not a training checkpoint ({exc})") from exc
    return list(contents) if isinstance(contents, dict) else []


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

    package = args.root / "dyhead_serve"
    installed = Path(dyhead_serve.__file__).resolve().parent
    if not args.no_export and package.resolve() != installed:
        # The export runs the installed dyhead-export, which reads the installed package's files.
        raise SystemExit(f"{package} is not the installed package ({installed}): use --no-export")
    folder = package / "zoo_files" / "default"
    sha256 = write_weights(args.checkpoint, folder / "config.yaml", folder / WEIGHTS_FILE)
    set_default_sha256(package / "zoo.py", sha256)
    print(f"weights: {folder / WEIGHTS_FILE} (sha256 {sha256})")
    if args.no_export:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        shapes = generate_synthetic_dataset(Path(tmp), num_train=0, num_val=1, image_size=320, seed=1)
        (image,) = shapes.image_root("val").glob("*.png")
        # A new process, so that it imports the updated DEFAULT_SHA256.
        export = [*exporter_command(), "onnx", "--model", "default", "--external-weights"]
        export += ["--out", str(folder), "--verify-image", str(image)]
        code = subprocess.run(export, check=False).returncode
    if code == 0 and sha256_of(folder / WEIGHTS_FILE) != sha256:
        raise SystemExit(f"{folder / WEIGHTS_FILE} changed during the export; ship again")
    return code


if __name__ == "__main__":
    sys.exit(main())
