"""``dyhead-serve train`` end to end: datasets on disk, checkpoints, metrics, evaluation."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from tests.training.tiny_training import parse_train_args, run_train, train_command_args

_parse = parse_train_args
_tiny_args = partial(train_command_args, "dyhead_r50_atss_fpn_1x")


def test_train_then_resume_after_the_end(shapes, tmp_path):
    out = tmp_path / "run"
    assert (
        run_train(_parse(_tiny_args(shapes, out, "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "2")))
        == 0
    )
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_0000001.pth", "model_final.pth"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 1, 2, 2]  # 3 iterations, then the final evaluation
    assert {"loss_cls", "loss_box_reg", "loss_ctr", "total_loss", "lr", "time", "data_time"} <= set(
        records[0]
    )
    assert "bbox/AP" in records[-1] and "bbox/AP50" in records[-1]
    assert "AP50" in json.loads(
        (out / "inference" / "coco_eval.json").read_text()
    )  # NaN (null): random model
    assert (out / "config.yaml").is_file()
    # --resume of a finished run does nothing more
    args = _parse(_tiny_args(shapes, out, "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "2"))
    args.resume = True
    assert run_train(args) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4


def test_bad_inputs_exit_2_with_one_line(shapes, tmp_path, capsys, monkeypatch):
    assert run_train(_parse(_tiny_args(shapes, tmp_path, "DATASETS.TRAIN", "('nowhere',)"))) == 2
    assert "nowhere" in capsys.readouterr().err
    assert run_train(_parse(_tiny_args(shapes, tmp_path, "MODEL.WEIGHTS", str(tmp_path / "none.pth")))) == 2
    assert "no such file" in capsys.readouterr().err
    assert run_train(_parse(_tiny_args(shapes, tmp_path, "SOLVER.OPTIMIZER", "LAMB"))) == 2
    assert "SOLVER.OPTIMIZER" in capsys.readouterr().err
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "no_datasets"))
    assert run_train(_parse(_tiny_args(shapes, tmp_path, "DATASETS.TEST", "('coco_2017_val',)"))) == 2
    assert 'DATASETS.TEST "()"' in capsys.readouterr().err
    mmdet = _parse(train_command_args("atss_r50_fpn_dyhead_1x_coco", shapes, tmp_path))
    assert run_train(mmdet) == 2
    assert "train it in mmdetection" in capsys.readouterr().err
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing was trained


def test_num_gpus_outside_torchrun_prints_the_command(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    args = _parse(
        [
            "--config",
            "my.yaml",
            "--num-gpus",
            "4",
            "--resume",
            "SOLVER.IMS_PER_BATCH",
            "16",
            "OUTPUT_DIR",
            "out dir",
        ]
    )
    assert run_train(args) == 2
    err = capsys.readouterr().err
    command = (
        "torchrun --standalone --nproc_per_node=4 -m dyhead_serve.cli train --config my.yaml --resume "
        "SOLVER.IMS_PER_BATCH 16 OUTPUT_DIR 'out dir'"
    )
    assert command in err
    assert shlex.split(command)[6:] == [
        "--config",
        "my.yaml",
        "--resume",
        "SOLVER.IMS_PER_BATCH",
        "16",
        "OUTPUT_DIR",
        "out dir",
    ]


@pytest.mark.slow
def test_two_processes_under_torchrun_on_the_cpu(shapes, tmp_path):
    """DDP with the Gloo backend: 2 processes, 1 image each, 2 iterations (slow: it starts
    processes and a rendezvous)."""
    # dyhead-serve's entry point, until the CLI names the command: torchrun runs a script file.
    script = tmp_path / "train_entry.py"
    script.write_text(
        "import argparse, logging, sys\n"
        "from dyhead_serve.cli.train import add_train_arguments, run_train\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "parser = argparse.ArgumentParser()\n"
        "add_train_arguments(parser)\n"
        "sys.exit(run_train(parser.parse_args()))\n"
    )
    argv = ["--num-gpus", "2", *_tiny_args(shapes, tmp_path, "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*torchrun, str(script), *argv], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 1]  # written once, by rank 0
    assert (tmp_path / "model_final.pth").is_file()
