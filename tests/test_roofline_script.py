"""benchmarks/roofline.py: its FLOP count (torch's counter + the analytic deformable-conv GEMM),
its SGEMM measurement and its profile summary. Nothing here asserts a time."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dyhead_serve.ops.deform_conv import ModulatedDeformConv2d
from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def roofline():
    return load_benchmark("roofline")


class ConvThenDeformable(nn.Module):
    """A 3x3 conv (8 -> 16 channels) feeding a stride-2 deformable 3x3 conv (16 -> 4 channels)
    whose offsets and masks come from a 1x1 conv (16 -> 27 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.offsets = nn.Conv2d(16, 27, 1, stride=2)
        self.deformable = ModulatedDeformConv2d(16, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x)
        offset_mask = self.offsets(features)
        return self.deformable(features, offset_mask[:, :18], offset_mask[:, 18:].sigmoid())


def test_deformable_conv_flops_are_its_gemm(roofline):
    # 2 (multiply-add) * N 2 * Cout 4 * Cin/groups 16 * 3 * 3 * Hout 5 * Wout 7
    assert roofline.deform_conv_flops((4, 16, 3, 3), (2, 4, 5, 7)) == 2 * 2 * 4 * 16 * 9 * 35


def test_deformable_conv_flops_refuse_a_mismatched_output(roofline):
    with pytest.raises(ValueError, match="channels"):
        roofline.deform_conv_flops((4, 16, 3, 3), (1, 8, 5, 7))


def test_count_flops_adds_the_deformable_gemm_to_torchs_count(roofline):
    model = ConvThenDeformable().eval()
    flops = roofline.count_flops(model, torch.randn(2, 8, 10, 14))
    conv = 2 * 2 * 16 * 8 * 9 * 10 * 14  # 3x3 conv at 10x14
    offsets = 2 * 2 * 27 * 16 * 1 * 5 * 7  # 1x1 stride-2 conv at 5x7
    assert flops.standard == conv + offsets  # torch's counter does not see the deformable conv
    assert flops.deformable == 2 * 2 * 4 * 16 * 9 * 5 * 7
    assert flops.deformable_layers == 1
    assert flops.total == flops.standard + flops.deformable


def test_count_flops_leaves_no_hooks_behind(roofline):
    model = ConvThenDeformable().eval()
    roofline.count_flops(model, torch.randn(1, 8, 6, 6))
    assert not model.deformable._forward_hooks


def test_sgemm_peak_names_the_library_that_reached_it(roofline):
    rate, source = roofline.sgemm_peak(size=128, repeats=2)
    assert rate > 0
    assert source in ("torch.matmul", "numpy.matmul")


def test_profile_summary_groups_deformable_convs_convs_and_the_rest(roofline, capsys):
    flops = roofline.FlopCount(standard=300 * 10**9, deformable=200 * 10**9, deformable_layers=2)
    per_type = {"DeformConv": 2.0, "Conv": 1.5, "FusedConv": 0.5, "Mul": 0.75, "Add": 0.25}
    roofline.print_profile("onnxruntime", per_type, flops, peak=200e9)
    lines = capsys.readouterr().out.splitlines()
    assert "5000.0 ms in kernels" in lines[0]
    assert (
        "deformable convs" in lines[1] and "2000.0 ms" in lines[1] and "100 GFLOP/s = 50% of peak" in lines[1]
    )
    assert "convs" in lines[2] and "2000.0 ms" in lines[2] and "150 GFLOP/s = 75% of peak" in lines[2]
    assert "the rest" in lines[3] and "1000.0 ms" in lines[3]
