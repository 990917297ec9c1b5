"""Detectron2's parameter groups, the optimizer choice and gradient clipping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dyhead_serve.config import get_default_config
from dyhead_serve.training.from_config import gradient_clipper, optimizer_settings
from dyhead_serve.training.grad_clip import GradientClipper
from dyhead_serve.training.optimizer import build_optimizer, build_param_groups


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 32, 1)
        self.gn = nn.GroupNorm(4, 32)
        self.ln = nn.LayerNorm(32)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)
        self.shared = self.conv  # the same parameters under a second name


def _settings(groups: list[dict]) -> dict[int, tuple[float, float]]:
    return {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}


def test_groups_norm_bias_frozen_and_shared():
    net = _Net()
    groups = build_param_groups(
        net, base_lr=0.1, weight_decay=1e-4, weight_decay_norm=0.0, bias_lr_factor=2.0
    )
    by_param = _settings(groups)
    assert len(by_param) == 6  # conv, gn, ln (weight + bias each); frozen and shared left out
    assert sum(len(g["params"]) for g in groups) == 6
    assert by_param[id(net.conv.weight)] == (0.1, 1e-4)
    assert by_param[id(net.conv.bias)] == (pytest.approx(0.2), 1e-4)
    assert by_param[id(net.gn.weight)] == (0.1, 0.0)
    assert by_param[id(net.gn.bias)] == (pytest.approx(0.2), 0.0)  # a norm bias keeps the norm decay
    assert by_param[id(net.ln.weight)] == (0.1, 0.0)
    assert len(groups) == 4  # equal settings share a group
    with_bias_decay = _settings(build_param_groups(net, 0.1, 1e-4, 0.0, weight_decay_bias=0.5))
    assert with_bias_decay[id(net.conv.bias)] == (0.1, 0.5)
    assert with_bias_decay[id(net.gn.bias)] == (0.1, 0.5)


def test_build_optimizer_sgd_adamw_and_unknown():
    cfg = get_default_config()
    cfg.merge_from_list(["SOLVER.BASE_LR", "0.02", "SOLVER.MOMENTUM", "0.8", "SOLVER.NESTEROV", "True"])
    sgd = build_optimizer(_Net(), optimizer_settings(cfg))
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.8 and sgd.defaults["nesterov"] is True
    assert {g["lr"] for g in sgd.param_groups} == {0.02}
    cfg.merge_from_list(["SOLVER.OPTIMIZER", "ADAMW", "SOLVER.WEIGHT_DECAY", "0.05"])
    adamw = build_optimizer(_Net(), optimizer_settings(cfg))
    assert isinstance(adamw, torch.optim.AdamW)
    assert {g["weight_decay"] for g in adamw.param_groups} == {0.05, 0.0}
    cfg.merge_from_list(["SOLVER.OPTIMIZER", "LAMB"])
    with pytest.raises(ValueError, match=r"SOLVER\.OPTIMIZER"):
        build_optimizer(_Net(), optimizer_settings(cfg))


def _params_with_grads(*grads: list[float]) -> list[nn.Parameter]:
    params = []
    for grad in grads:
        p = nn.Parameter(torch.zeros(len(grad)))
        p.grad = torch.tensor(grad)
        params.append(p)
    return params


def test_gradient_clipping_kinds():
    params = _params_with_grads([3.0, -0.5], [4.0])
    GradientClipper("value", 1.0)(params)
    assert params[0].grad.tolist() == [1.0, -0.5] and params[1].grad.tolist() == [1.0]
    # per parameter: [3, 4] has norm 5 -> scaled to norm 1; [4] -> [1]
    params = _params_with_grads([3.0, 4.0], [4.0])
    GradientClipper("norm", 1.0)(params)
    torch.testing.assert_close(params[0].grad, torch.tensor([0.6, 0.8]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(params[1].grad, torch.tensor([1.0]), rtol=1e-5, atol=1e-6)
    # whole model: total norm of [3, 4] and [12] is 13 -> everything divided by 13
    params = _params_with_grads([3.0, 4.0], [12.0])
    GradientClipper("full_model", 1.0)(params)
    torch.testing.assert_close(params[1].grad, torch.tensor([12.0 / 13]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="CLIP_TYPE"):
        GradientClipper("agc", 1.0)
    cfg = get_default_config()
    assert gradient_clipper(cfg) is None
    cfg.merge_from_list(["SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm"])
    clipper = gradient_clipper(cfg)
    assert clipper is not None and clipper.clip_type == "norm"
