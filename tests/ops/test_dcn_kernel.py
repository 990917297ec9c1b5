"""Selecting the deformable-conv kernel: auto by default, the Triton kernel on CUDA when asked;
CPU inference results and exported graphs never change."""

from __future__ import annotations

import pytest
import torch

from dyhead_serve.ops import get_dcn_kernel, modulated_deform_conv2d, set_dcn_kernel, use_dcn_kernel
from dyhead_serve.ops.dcn_kernel import ENV_VAR
from tests.hardware import HAS_TRITON, needs_gpu


@pytest.fixture(autouse=True)
def _reset_selection(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    set_dcn_kernel(None)
    yield
    set_dcn_kernel(None)


def _inputs(device: str = "cpu"):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 32, 9, 11, generator=gen)
    offset_mask = torch.randn(2, 27, 18, 22, generator=gen)  # a finer level's map: the leading read
    weight = torch.randn(32, 32, 3, 3, generator=gen) * 0.05
    bias = torch.randn(32, generator=gen)
    tensors = (x, offset_mask[:, :18], offset_mask[:, 18:].sigmoid(), weight, bias)
    return [t.to(device) for t in tensors]


def test_auto_is_the_default_and_the_environment_selects(monkeypatch):
    from dyhead_serve import plugins

    monkeypatch.setattr(plugins, "triton_available", lambda: True)
    assert get_dcn_kernel() == "auto"
    monkeypatch.setenv(ENV_VAR, "triton")
    assert get_dcn_kernel() == "triton"
    set_dcn_kernel("torchvision")
    assert get_dcn_kernel() == "torchvision"  # code overrides the environment
    monkeypatch.setenv(ENV_VAR, "cuda")
    set_dcn_kernel(None)
    with pytest.raises(ValueError, match="auto, torchvision, triton"):
        get_dcn_kernel()
    with pytest.raises(ValueError, match="unknown"):
        set_dcn_kernel("cudnn")


def test_triton_without_triton_fails_when_the_model_is_built(monkeypatch):
    """Selected through the environment, a missing Triton is reported when the model is built,
    not in the middle of a forward pass."""
    from dyhead_serve import plugins
    from dyhead_serve.config import load_config
    from dyhead_serve.modeling.build import build_model
    from tests.conftest import TINY_OVERRIDES

    monkeypatch.setattr(plugins, "triton_available", lambda: False)
    monkeypatch.setenv(ENV_VAR, "triton")
    cfg = load_config("dyhead_r50_atss_fpn_1x", overrides=["MODEL.DEVICE", "cpu", *TINY_OVERRIDES])
    with pytest.raises(ValueError, match=f"{ENV_VAR}=triton needs Triton"):
        build_model(cfg)
    with pytest.raises(ValueError, match="needs Triton"):
        set_dcn_kernel("triton")


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_cpu_results_do_not_change_with_triton_selected():
    args = _inputs()
    expected = modulated_deform_conv2d(*args, padding=1)
    with use_dcn_kernel("triton"):
        assert get_dcn_kernel() == "triton"
        assert torch.equal(modulated_deform_conv2d(*args, padding=1), expected)
    assert get_dcn_kernel() == "auto"


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("stride", [1, 2])
def test_cuda_uses_the_triton_kernel_with_the_official_read(stride):
    args = _inputs("cuda")
    if stride == 2:
        args[0] = torch.randn(2, 32, 35, 43, device="cuda")  # the finer level; output 18x22
    expected = modulated_deform_conv2d(*args, stride=stride, padding=1)
    with use_dcn_kernel("triton"):
        got = modulated_deform_conv2d(*args, stride=stride, padding=1)
    assert (got - expected).abs().max() / expected.abs().max() < 1e-5
