"""tools/ship_default_model.py: weights and zoo sha256 replaced together (the export step runs
when the model is shipped for real; tests/test_default_model.py checks the shipped result)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from dyhead_serve import zoo
from dyhead_serve.checkpoint.safetensors_file import read_safetensors
from tools.ship_default_model import main

PACKAGE = Path(zoo.__file__).parent
SHIPPED = PACKAGE / "zoo_files" / "default"


def _fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "dyhead_serve" / "zoo_files" / "default").mkdir(parents=True)
    shutil.copy(PACKAGE / "zoo.py", root / "dyhead_serve" / "zoo.py")
    shutil.copy(SHIPPED / "config.yaml", root / "dyhead_serve" / "zoo_files" / "default" / "config.yaml")
    return root


def test_ships_the_model_state_only_and_pins_its_sha256(tmp_path) -> None:
    root = _fake_root(tmp_path)
    model = read_safetensors(SHIPPED / "model.safetensors")
    model = {name: value + 1 if value.is_floating_point() else value for name, value in model.items()}
    checkpoint = tmp_path / "model_final.pth"
    torch.save({"model": model, "optimizer": {"state": {}}, "iteration": 5}, checkpoint)

    assert main([str(checkpoint), "--root", str(root), "--no-export"]) == 0

    shipped = root / "dyhead_serve" / "zoo_files" / "default" / "model.safetensors"
    state = read_safetensors(shipped)
    assert list(state) == list(model)
    assert all(torch.equal(state[name], model[name]) for name in model)
    sha256 = hashlib.sha256(shipped.read_bytes()).hexdigest()
    text = (root / "dyhead_serve" / "zoo.py").read_text()
    assert f'DEFAULT_SHA256 = "{sha256}"' in text


@pytest.mark.parametrize(
    ("contents", "message"),
    [([1, 2, 3], "not a training checkpoint"), ({"model": {"w": torch.zeros(2)}}, "unexpected")],
    ids=["not-a-checkpoint", "other-architecture"],
)
def test_refuses_what_is_not_a_checkpoint_of_the_default_model(tmp_path, contents, message) -> None:
    root = _fake_root(tmp_path)
    bad = tmp_path / "bad.pth"
    torch.save(contents, bad)
    with pytest.raises(SystemExit, match=message):
        main([str(bad), "--root", str(root), "--no-export"])
    assert (root / "dyhead_serve" / "zoo.py").read_text() == (PACKAGE / "zoo.py").read_text()
    assert not (root / "dyhead_serve" / "zoo_files" / "default" / "model.safetensors").exists()


def test_exporting_into_another_tree_than_the_installed_one_is_refused(tmp_path) -> None:
    root = _fake_root(tmp_path)
    with pytest.raises(SystemExit, match="not the installed package"):
        main([str(tmp_path / "any.pth"), "--root", str(root)])
