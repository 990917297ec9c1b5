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


def test_count_flops_reports_how_far_the_offsets_move_the_samples(roofline):
    model = ConvThenDeformable().eval()
    nn.init.zeros_(model.offsets.weight)
    with torch.no_grad():
        model.offsets.bias.copy_(torch.cat([torch.full((18,), -0.5), torch.zeros(9)]))
    flops = roofline.count_flops(model, torch.randn(1, 8, 6, 6))
    assert flops.mean_abs_offset == pytest.approx(0.5)


class WithOffsetConv(nn.Module):
    """Named like DyHead's offset convs: ``offset`` (official layout), 27 output channels."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Conv2d(4, 27, 3, padding=1)
        self.other = nn.Conv2d(4, 27, 3, padding=1)


def test_scale_offsets_scales_only_the_offset_convs(roofline):
    model = WithOffsetConv()
    offset_weight, other_weight = model.offset.weight.clone(), model.other.weight.clone()
    assert roofline.scale_offsets(model, 10.0) == 1
    torch.testing.assert_close(model.offset.weight, offset_weight * 10)
    torch.testing.assert_close(model.other.weight, other_weight)
    assert roofline.scale_offsets(nn.Sequential(nn.Conv2d(4, 27, 1)), 10.0) == 0


def test_every_onnxruntime_variant_applies_to_session_options(roofline):
    ort = pytest.importorskip("onnxruntime")
    for variant in roofline.ORT_VARIANTS.values():
        variant(ort.SessionOptions(), ort)


def test_onnxruntime_profile_sums_kernel_time_by_op_type(roofline, tmp_path):
    pytest.importorskip("onnxruntime")
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "weight")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["images", "weight"], ["conv"]),
            helper.make_node("Sigmoid", ["conv"], ["out"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), tmp_path / "model.onnx")
    per_type = roofline.onnxruntime_profile(tmp_path, torch.randn(1, 3, 16, 16), torch.tensor([[16, 16]]))
    # ONNX Runtime may fuse the sigmoid into the conv and run it in its blocked (NCHWc) layout.
    assert {"Conv", "FusedConv"} & set(per_type)
    assert set(per_type) <= {"Conv", "FusedConv", "Sigmoid", "ReorderInput", "ReorderOutput"}
    assert all(seconds > 0 for seconds in per_type.values())


def test_time_runs_discards_the_warmup_calls(roofline):
    calls = []
    times = roofline.time_runs(lambda: calls.append(1) or {}, iters=3, warmup=2)
    assert len(calls) == 5
    assert len(times) == 3


def test_a_result_row_is_the_roofline_over_the_median(roofline, capsys):
    flops = roofline.FlopCount(standard=60 * 10**9, deformable=40 * 10**9, deformable_layers=2)
    result = roofline.ModelResult("tiny", 64, 96, flops, rows=[("onnxruntime", [2.0, 1.0, 4.0], 1e-5)])
    roofline.print_result(result, peak=100e9, flops_only=False)  # roofline: 1 s; median: 2 s
    lines = capsys.readouterr().out.splitlines()
    assert "100.0 GFLOP = 60.0 counted by torch + 40.0 in 2 deformable convs" in lines[1]
    assert lines[3].split()[3:8] == ["100.0", "1000.0", "2000.0", "3600.0", "50.0%"]
