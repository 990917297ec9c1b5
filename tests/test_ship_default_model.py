"""tools/ship_default_model.py: weights and zoo sha256 replaced together (the export step runs
when the model is shipped for real; tests/test_default_model.py checks the shipped result)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from dyhead_serve import zoo
from tools.ship_default_model import main

PACKAGE = Path(zoo.__file__).parent


def _fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "dyhead_serve" / "zoo_files" / "default").mkdir(parents=True)
    shutil.copy(PACKAGE / "zoo.py", root / "dyhead_serve" / "zoo.py")
    return root


def test_ships_the_model_state_only_and_pins_its_sha256(tmp_path) -> None:
    root = _fake_root(tmp_path)
    model = {"w": torch.arange(6.0).view(2, 3)}
    checkpoint = tmp_path / "model_final.pth"
    torch.save({"model": model, "optimizer": {"state": {}}, "iteration": 5}, checkpoint)

    assert main([str(checkpoint), "--root", str(root), "--no-export"]) == 0

    shipped = root / "dyhead_serve" / "zoo_files" / "default" / "model_final.pth"
    state = torch.load(shipped, weights_only=True)
    assert list(state) == ["model"] and torch.equal(state["model"]["w"], model["w"])
    sha256 = hashlib.sha256(shipped.read_bytes()).hexdigest()
    text = (root / "dyhead_serve" / "zoo.py").read_text()
    assert f'DEFAULT_SHA256 = "{sha256}"' in text


def test_refuses_a_file_that_is_not_a_training_checkpoint(tmp_path) -> None:
    root = _fake_root(tmp_path)
    bad = tmp_path / "bad.pth"
    torch.save([1, 2, 3], bad)
    with pytest.raises(SystemExit, match="not a training checkpoint"):
        main([str(bad), "--root", str(root), "--no-export"])
    assert (root / "dyhead_serve" / "zoo.py").read_text() == (PACKAGE / "zoo.py").read_text()
