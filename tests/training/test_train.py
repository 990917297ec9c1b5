"""The training loop on a tiny detector and in-memory synthetic images (CPU)."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dyhead_serve.data.mapper import TrainingSample
from dyhead_serve.modeling.build import build_model
from dyhead_serve.training.checkpointing import LAST_CHECKPOINT_FILE
from dyhead_serve.training.from_config import trainer_settings
from dyhead_serve.training.train import Trainer
from tests.training.tiny_training import cycle_batches, synthetic_samples, tiny_config


def _records(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def _trainer(cfg, batches, **kwargs) -> Trainer:
    torch.manual_seed(0)
    trainer = Trainer(build_model(cfg), batches, trainer_settings(cfg), **kwargs)
    return trainer


def test_loss_falls_and_every_iteration_is_recorded(tmp_path):
    cfg = tiny_config(
        tmp_path, "SOLVER.MAX_ITER", "20", "SOLVER.BASE_LR", "0.05", "MODEL.BACKBONE.FREEZE_AT", "5"
    )
    trainer = _trainer(cfg, cycle_batches(synthetic_samples(2), 2))
    trainer.resume_or_load(resume=False)
    trainer.train()
    records = _records(tmp_path)
    assert [r["iteration"] for r in records] == list(range(20))
    assert set(records[0]) == {
        "iteration",
        "loss_cls",
        "loss_box_reg",
        "loss_ctr",
        "total_loss",
        "lr",
        "time",
        "data_time",
    }
    first = sum(r["total_loss"] for r in records[:3]) / 3
    last = sum(r["total_loss"] for r in records[-3:]) / 3
    assert last < 0.95 * first, (first, last)
    assert records[0]["lr"] == pytest.approx(0.05 * 0.001)  # warmup factor at iteration 0
    assert records[5]["lr"] == pytest.approx(0.05)
    for r in records:
        assert r["total_loss"] == pytest.approx(r["loss_cls"] + r["loss_box_reg"] + r["loss_ctr"], rel=1e-5)
    assert (tmp_path / "model_final.pth").is_file()
    assert (tmp_path / LAST_CHECKPOINT_FILE).read_text() == "model_final.pth"
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert saved["iteration"] == 19 and saved["scheduler"]["last_epoch"] == 20


def test_resume_continues_from_the_checkpoint_iteration_on_the_same_schedule(tmp_path):
    # RetinaNet, so that the loss normaliser's moving average must carry over too.
    overrides = ("SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "3", "SOLVER.WARMUP_ITERS", "5")
    samples = synthetic_samples(2)
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    full = _trainer(
        tiny_config(full_dir, *overrides, meta="dyhead_r50_retina_fpn_1x"), cycle_batches(samples, 2)
    )
    full.resume_or_load(resume=False)
    full.train()
    assert (full_dir / "model_0000002.pth").is_file()

    # An interrupted run: its output folder holds the checkpoint after iteration 2.
    resumed_dir.mkdir()
    shutil.copy(full_dir / "model_0000002.pth", resumed_dir)
    (resumed_dir / LAST_CHECKPOINT_FILE).write_text("model_0000002.pth")
    (resumed_dir / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in _records(full_dir)[:4])  # iteration 3 was logged, then it died
    )
    cfg = tiny_config(resumed_dir, *overrides, meta="dyhead_r50_retina_fpn_1x")
    resumed = _trainer(cfg, cycle_batches(samples, 2))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3
    resumed.train()
    expected, got = _records(full_dir), _records(resumed_dir)
    assert [r["iteration"] for r in got] == list(range(6))
    for want, have in zip(expected[3:], got[3:], strict=True):
        assert have["lr"] == pytest.approx(want["lr"], rel=1e-12)  # warmup still running at 3 and 4
        for name in ("loss_cls", "loss_box_reg", "total_loss"):
            assert have[name] == pytest.approx(want[name], rel=1e-4), name
    torch.testing.assert_close(
        torch.load(resumed_dir / "model_final.pth", weights_only=True)["model"],
        torch.load(full_dir / "model_final.pth", weights_only=True)["model"],
        rtol=1e-4,
        atol=1e-6,
    )


class _DivergingAt:
    """Batches as usual; before iteration ``bad`` it snapshots the weights and sets parameter
    ``poison`` (the class logits' bias by default) to NaN, as a diverging run would."""

    def __init__(
        self,
        model: torch.nn.Module,
        samples: list[TrainingSample],
        bad: int,
        poison: str = "head.cls_logits.bias",
    ) -> None:
        self.model, self.samples, self.bad, self.poison = model, samples, bad, poison
        self.snapshot: dict[str, torch.Tensor] = {}

    def __iter__(self) -> Iterator[list[TrainingSample]]:
        for iteration, batch in enumerate(cycle_batches(self.samples, 2)):
            if iteration == self.bad:
                self.snapshot = {k: v.clone() for k, v in self.model.state_dict().items()}
                with torch.no_grad():
                    self.model.get_parameter(self.poison).fill_(math.nan)
            yield batch


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path, "SOLVER.MAX_ITER", "10", "SOLVER.CHECKPOINT_PERIOD", "2")
    torch.manual_seed(0)
    model = build_model(cfg)
    data = _DivergingAt(model, synthetic_samples(2), bad=3)
    trainer = Trainer(model, data, trainer_settings(cfg))
    trainer.resume_or_load(resume=False)
    with pytest.raises(FloatingPointError, match=r"iteration 3 .*model_0000001\.pth.*--resume"):
        trainer.train()
    assert (tmp_path / LAST_CHECKPOINT_FILE).read_text() == "model_0000001.pth"
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["model_0000001.pth"]
    kept = torch.load(tmp_path / "model_0000001.pth", weights_only=True)
    assert kept["iteration"] == 1 and all(torch.isfinite(v).all() for v in kept["model"].values())
    # the bad iteration's update was not applied
    state = model.state_dict()
    for name in ("head.bbox_pred.weight", "backbone.backbone.fpn_output3.weight"):
        assert torch.equal(state[name], data.snapshot[name]), name
    assert [r["iteration"] for r in _records(tmp_path)] == [0, 1, 2]


def test_nan_offsets_in_forward_stop_with_a_clear_error_instead_of_crashing(tmp_path):
    """NaN offsets would segfault torchvision's CPU deform_conv2d; the DyHead layer raises
    FloatingPointError in training, and the trainer stops as on a NaN loss."""
    cfg = tiny_config(tmp_path, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2")
    torch.manual_seed(0)
    model = build_model(cfg)
    data = _DivergingAt(model, synthetic_samples(2), bad=2, poison="backbone.dyhead_tower.0.offset.bias")
    trainer = Trainer(model, data, trainer_settings(cfg))
    trainer.resume_or_load(resume=False)
    with pytest.raises(FloatingPointError) as info:
        trainer.train()
    message = str(info.value)
    assert message.startswith("iteration 2 failed: non-finite offsets in deformable conv")
    assert "model_0000001.pth" in message and "--resume" in message
    assert isinstance(info.value.__cause__, FloatingPointError)
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["model_0000001.pth"]
    assert [r["iteration"] for r in _records(tmp_path)] == [0, 1]


def test_evaluation_every_period_and_at_the_end(tmp_path):
    cfg = tiny_config(tmp_path, "SOLVER.MAX_ITER", "5", "TEST.EVAL_PERIOD", "2")
    calls = []

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        assert not model.training
        calls.append(len(calls))
        return {"bbox/AP": 10.0 * len(calls)}

    trainer = _trainer(cfg, cycle_batches(synthetic_samples(2), 2), evaluate=evaluate)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.model.training
    evals = [r for r in _records(tmp_path) if "bbox/AP" in r]
    assert [(r["iteration"], r["bbox/AP"]) for r in evals] == [(1, 10.0), (3, 20.0), (4, 30.0)]


def test_losses_check_the_padded_size(tmp_path):
    model = build_model(tiny_config(tmp_path))
    outputs = model(torch.zeros(1, 3, 128, 128))
    with pytest.raises(ValueError, match="padded_hw"):
        model.losses(outputs, [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.int64)], (128, 256))
