"""Training checkpoints in ``OUTPUT_DIR``, as Detectron2's ``DetectionCheckpointer`` and
``PeriodicCheckpointer`` write them.

``model_0004999.pth`` (after iteration 4999, i.e. every ``SOLVER.CHECKPOINT_PERIOD``
iterations) and ``model_final.pth`` hold ``{"model", "optimizer", "scheduler", "iteration"}``
(plus ``grad_scaler`` with AMP and ``loss_state`` for losses with running state); the file
``last_checkpoint`` names the newest. ``model`` is a plain state dict with the official key
names, so any of these files is also a ``--weights`` / ``MODEL.WEIGHTS`` file. Everything in a
checkpoint is tensors and plain Python values: it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from dyhead_serve.checkpoint import CheckpointError
from dyhead_serve.checkpoint.read import refuse_non_finite

__all__ = ["LAST_CHECKPOINT_FILE", "TrainingCheckpointer", "checkpoint_name"]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT_FILE = "last_checkpoint"
FINAL_NAME = "model_final"


def checkpoint_name(iteration: int, max_iter: int) -> str:
    """``model_final`` after the last iteration, else ``model_{iteration:07d}``."""
    return FINAL_NAME if iteration + 1 >= max_iter else f"model_{iteration:07d}"


def _atomic_write(path: Path, write: Any) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


class TrainingCheckpointer:
    """Saves and restores the training state in ``output_dir``.

    Args:
        output_dir: ``OUTPUT_DIR``.
        save_to_disk: False on processes other than the main one (they only read).
    """

    def __init__(self, output_dir: str | os.PathLike[str], save_to_disk: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.save_to_disk = save_to_disk

    def save(self, name: str, state: dict[str, Any]) -> Path:
        """Write ``state`` to ``output_dir/name.pth`` and point ``last_checkpoint`` at it."""
        path = self.output_dir / f"{name}.pth"
        if not self.save_to_disk:
            return path
        self.output_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, lambda p: torch.save(state, p))
        _atomic_write(
            self.output_dir / LAST_CHECKPOINT_FILE, lambda p: p.write_text(path.name, encoding="utf-8")
        )
        logger.info("saved checkpoint %s (iteration %s)", path, state.get("iteration"))
        return path

    def last_checkpoint(self) -> Path | None:
        """The file ``last_checkpoint`` names, or None when there is none."""
        marker = self.output_dir / LAST_CHECKPOINT_FILE
        if not marker.is_file():
            return None
        return self.output_dir / marker.read_text(encoding="utf-8").strip()

    def load_last(self) -> dict[str, Any] | None:
        """The newest checkpoint's contents (on the CPU), or None when there is none.

        Raises:
            CheckpointError: ``last_checkpoint`` names a missing or unreadable file.
        """
        path = self.last_checkpoint()
        if path is None:
            return None
        if not path.is_file():
            raise CheckpointError(
                f"{self.output_dir / LAST_CHECKPOINT_FILE} names {path.name}, which does not exist; "
                "fix or delete that file to resume"
            )
        try:
            state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # any failure to read the file is a corrupt checkpoint
            raise CheckpointError(f"checkpoint {path}: cannot be read to resume ({exc})") from exc
        for key in ("model", "optimizer", "scheduler", "iteration"):
            if key not in state:
                raise CheckpointError(
                    f"checkpoint {path} has no {key!r} entry: it is not a training checkpoint"
                )
        if isinstance(state["model"], dict):
            refuse_non_finite(state["model"], f"checkpoint {path}")
        logger.info("resuming from %s (iteration %d)", path, state["iteration"])
        return state
