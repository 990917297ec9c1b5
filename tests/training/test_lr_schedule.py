"""Warmup + multi-step / cosine schedules at chosen iterations, worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from dyhead_serve.training.lr_schedule import LRMultiplier, WarmupSchedule


def test_linear_warmup_then_steps():
    schedule = WarmupSchedule(
        "WarmupMultiStepLR", 100, steps=(60, 80), gamma=0.1, warmup_factor=0.001, warmup_iters=10
    )
    # linear from 0.001 at iteration 0 to 1 at iteration 10: 0.001 + 0.999 * i / 10
    assert schedule(0) == pytest.approx(0.001)
    assert schedule(5) == pytest.approx(0.5005)
    assert schedule(9) == pytest.approx(0.001 + 0.999 * 0.9)
    assert schedule(10) == 1.0
    assert schedule(59) == 1.0
    # the step applies from iteration STEPS[i] on
    assert schedule(60) == pytest.approx(0.1)
    assert schedule(79) == pytest.approx(0.1)
    assert schedule(80) == pytest.approx(0.01)
    assert schedule(100) == pytest.approx(0.01)


def test_constant_warmup_and_warmup_reaching_into_a_step():
    constant = WarmupSchedule(
        "WarmupMultiStepLR", 100, steps=(60,), warmup_factor=0.1, warmup_iters=10, warmup_method="constant"
    )
    assert [constant(i) for i in (0, 9)] == [pytest.approx(0.1)] * 2
    assert constant(10) == 1.0
    # the linear warmup ends at the schedule's value there: here already 0.1 (step at 5)
    early = WarmupSchedule("WarmupMultiStepLR", 100, steps=(5,), warmup_factor=0.001, warmup_iters=10)
    assert early(0) == pytest.approx(0.001)
    assert early(5) == pytest.approx(0.001 * 0.5 + 0.1 * 0.5)
    assert early(10) == pytest.approx(0.1)


def test_cosine():
    schedule = WarmupSchedule("WarmupCosineLR", 100, warmup_iters=0, end_factor=0.0)
    assert schedule(0) == pytest.approx(1.0)
    assert schedule(50) == pytest.approx(0.5)
    assert schedule(55) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.55)))
    assert schedule(100) == pytest.approx(0.0, abs=1e-12)


def test_invalid_and_out_of_range_steps():
    with pytest.raises(ValueError, match="STEPS"):
        WarmupSchedule("WarmupMultiStepLR", 100, steps=(80, 60))
    with pytest.raises(ValueError, match="LR_SCHEDULER_NAME"):
        WarmupSchedule("WarmupPolyLR", 100)
    beyond = WarmupSchedule("WarmupMultiStepLR", 100, steps=(60, 200), warmup_iters=0)
    assert beyond.steps == [60] and beyond(99) == pytest.approx(0.1)


def test_lr_multiplier_sets_every_group_and_restores_from_state():
    param = torch.nn.Parameter(torch.zeros(1))
    other = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [param], "lr": 0.02}, {"params": [other], "lr": 0.04}], lr=0.02)
    schedule = WarmupSchedule("WarmupMultiStepLR", 10, steps=(6,), warmup_factor=0.5, warmup_iters=2)
    scheduler = LRMultiplier(optimizer, schedule)
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(0.01), pytest.approx(0.02)]
    for _ in range(6):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(0.002), pytest.approx(0.004)]
    state = scheduler.state_dict()
    assert state == {"base_lrs": [0.02, 0.04], "last_epoch": 6}
    fresh_opt = torch.optim.SGD([{"params": [param], "lr": 0.02}, {"params": [other], "lr": 0.04}], lr=0.02)
    fresh = LRMultiplier(fresh_opt, schedule)
    fresh.load_state_dict(state)
    fresh_opt.step()
    fresh.step()
    assert fresh.last_epoch == 7 and fresh_opt.param_groups[0]["lr"] == pytest.approx(0.002)
