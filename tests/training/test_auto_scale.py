"""SOLVER.REFERENCE_WORLD_SIZE scaling, as Detectron2's auto_scale_workers."""

from __future__ import annotations

import pytest

from dyhead_serve.config import load_config
from dyhead_serve.training.auto_scale import auto_scale_workers


def test_schedule_for_8_gpus_scaled_to_2():
    cfg = load_config(
        "dyhead_r50_atss_fpn_1x", ["SOLVER.REFERENCE_WORLD_SIZE", "8", "TEST.EVAL_PERIOD", "5000"]
    )
    scaled = auto_scale_workers(cfg, 2)
    s = scaled.SOLVER
    assert (s.IMS_PER_BATCH, s.MAX_ITER, s.WARMUP_ITERS, s.STEPS) == (4, 360000, 4000, (240000, 320000))
    assert abs(s.BASE_LR - 0.0025) < 1e-12
    assert (scaled.TEST.EVAL_PERIOD, s.CHECKPOINT_PERIOD, s.REFERENCE_WORLD_SIZE) == (20000, 20000, 2)
    assert cfg.SOLVER.IMS_PER_BATCH == 16  # the input is not changed


def test_no_reference_or_same_size_is_unchanged_and_bad_batch_refused():
    cfg = load_config("dyhead_r50_atss_fpn_1x")
    assert auto_scale_workers(cfg, 4) is cfg
    cfg.merge_from_list(["SOLVER.REFERENCE_WORLD_SIZE", "4"])
    assert auto_scale_workers(cfg, 4) is cfg
    cfg.merge_from_list(["SOLVER.REFERENCE_WORLD_SIZE", "3"])
    with pytest.raises(ValueError, match="multiple"):
        auto_scale_workers(cfg, 2)
