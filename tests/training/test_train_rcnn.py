"""Training a tiny Faster R-CNN + DyHead on the CPU: the trainer's ``forward_train`` path, through
the Python API, the ``train`` command, and DistributedDataParallel under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dyhead_serve.modeling.build import build_model
from dyhead_serve.training.from_config import trainer_settings
from dyhead_serve.training.train import Trainer
from tests.modeling.test_rcnn_losses import TINY_RCNN, tiny_rcnn_config
from tests.training.tiny_training import (
    cycle_batches,
    parse_train_args,
    run_train,
    synthetic_samples,
    train_command_args,
)

LOSSES = ["loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"]


def _records(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def test_rcnn_loss_falls(tmp_path):
    cfg = tiny_rcnn_config(
        tmp_path, "SOLVER.MAX_ITER", "20", "SOLVER.BASE_LR", "0.05", "MODEL.BACKBONE.FREEZE_AT", "5"
    )
    torch.manual_seed(0)
    trainer = Trainer(build_model(cfg), cycle_batches(synthetic_samples(2), 2), trainer_settings(cfg))
    trainer.resume_or_load(resume=False)
    trainer.train()
    records = _records(tmp_path)
    assert [r["iteration"] for r in records] == list(range(20))
    assert [k for k in records[0] if k.startswith("loss")] == LOSSES
    for r in records:
        assert r["total_loss"] == pytest.approx(sum(r[k] for k in LOSSES), rel=1e-5)

    def mean(key: str, rows: list[dict]) -> float:
        return sum(r[key] for r in rows) / len(rows)

    first, last = records[:3], records[-3:]
    assert mean("total_loss", last) < 0.6 * mean("total_loss", first), (first, last)
    assert mean("loss_rpn_cls", last) < 0.9 * mean("loss_rpn_cls", first)  # the RPN learns too


def _train_argv(shapes: Path, output_dir: Path, *extra: str) -> list[str]:
    return train_command_args("dyhead_r50_rcnn_fpn_1x", shapes, output_dir, *TINY_RCNN, *extra)


def test_train_command_trains_and_evaluates_faster_rcnn(shapes, tmp_path):
    assert run_train(parse_train_args(_train_argv(shapes, tmp_path, "SOLVER.MAX_ITER", "2"))) == 0
    records = _records(tmp_path)
    assert [r["iteration"] for r in records[:2]] == [0, 1]
    assert all(set(LOSSES) <= set(r) for r in records[:2])
    assert "bbox/AP" in records[-1]  # evaluated after the last iteration
    assert (tmp_path / "model_final.pth").is_file()


@pytest.mark.slow
def test_faster_rcnn_under_torchrun_keeps_the_processes_in_sync(shapes, tmp_path):
    """DDP with the Gloo backend, 2 processes with an image each: DistributedDataParallel must wrap
    ``forward_train`` (it prepares the gradient reduction in ``forward``), else each process
    steps on its own gradients and the weights drift apart."""
    script = tmp_path / "train_entry.py"
    script.write_text(
        "import argparse, sys\n"
        "import torch, torch.distributed as dist\n"
        "from dyhead_serve.training import train\n"
        "from dyhead_serve.cli.train import add_train_arguments, run_train\n"
        "def train_and_dump(self, _train=train.Trainer.train):\n"
        "    _train(self)\n"
        "    weights = torch.cat([p.detach().flatten() for p in self.model.parameters()])\n"
        f"    torch.save(weights, f'{tmp_path}/weights_{{dist.get_rank()}}.pt')\n"
        "train.Trainer.train = train_and_dump\n"
        "parser = argparse.ArgumentParser()\n"
        "add_train_arguments(parser)\n"
        "sys.exit(run_train(parser.parse_args()))\n"
    )
    overrides = ("SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "0", "DATASETS.TEST", "()")
    argv = ["--num-gpus", "2", *_train_argv(shapes, tmp_path, *overrides)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*torchrun, str(script), *argv], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["iteration"] for r in _records(tmp_path)] == [0, 1, 2]
    rank0, rank1 = (torch.load(tmp_path / f"weights_{rank}.pt") for rank in (0, 1))
    torch.testing.assert_close(rank0, rank1, rtol=0, atol=1e-6)
