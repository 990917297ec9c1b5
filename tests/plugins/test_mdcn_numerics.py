"""The Triton kernel against torchvision's deform_conv2d, in Triton's CPU interpreter.

Error is measured as max |got - reference| / max |reference| (the output's scale): float32 inputs
must agree to 1e-5, float16 inputs (reference: torchvision in float32 on the same float16 values)
to 2e-3.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

from dyhead_serve.ops import read_leading_offset_map
from dyhead_serve.plugins import modulated_deform_conv

FP32_TOL = 1e-5
FP16_TOL = 2e-3


def _relative_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    return float((got.double() - reference.double()).abs().max() / reference.double().abs().max())


def _problem(
    n, cin, cout, h, w, *, stride=1, padding=1, dilation=1, groups=1, dgroups=1, map_hw=None, seed=0
):
    """Random DyHead-like inputs: offsets of a few pixels, sigmoid masks."""
    gen = torch.Generator().manual_seed(seed)
    ho = (h + 2 * padding - dilation * 2 - 1) // stride + 1
    wo = (w + 2 * padding - dilation * 2 - 1) // stride + 1
    mh, mw = map_hw or (ho, wo)
    return dict(
        input=torch.randn(n, cin, h, w, generator=gen),
        offset=torch.randn(n, 2 * dgroups * 9, mh, mw, generator=gen) * 2.0,
        mask=torch.randn(n, dgroups * 9, mh, mw, generator=gen).sigmoid(),
        weight=torch.randn(cout, cin // groups, 3, 3, generator=gen) / (cin * 9) ** 0.5,
        bias=torch.randn(cout, generator=gen),
        stride=stride, padding=padding, dilation=dilation, groups=groups,
    )  # fmt: skip


def _reference(p: dict, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """torchvision in float32 on the inputs rounded to ``dtype``."""
    cast = {k: v.to(dtype).float() if isinstance(v, torch.Tensor) else v for k, v in p.items()}
    return deform_conv2d(
        cast["input"], cast["offset"], cast["weight"], cast["bias"],
        stride=cast["stride"], padding=cast["padding"], dilation=cast["dilation"], mask=cast["mask"],
    )  # fmt: skip


def _ours(p: dict, dtype: torch.dtype = torch.float32, **kwargs) -> torch.Tensor:
    cast = {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in p.items()}
    return modulated_deform_conv(**cast, **kwargs)


# DyHead's shapes at small spatial sizes: the 3x3 convs of a DyConv (stride 1 on the level itself,
# stride 2 on the finer level), odd sizes, batch > 1, groups and deformable groups.
CASES = {
    "dyhead_stride1": dict(n=2, cin=32, cout=32, h=10, w=13),
    "dyhead_stride2_odd": dict(n=2, cin=32, cout=32, h=15, w=11, stride=2),
    "wide_channels": dict(n=1, cin=64, cout=48, h=5, w=7),
    "groups": dict(n=2, cin=32, cout=32, h=6, w=7, groups=2),
    "deformable_groups": dict(n=1, cin=32, cout=16, h=7, w=6, dgroups=4),
    "groups_and_dgroups": dict(n=1, cin=48, cout=24, h=5, w=5, groups=3, dgroups=2),
    "dilation_padding": dict(n=1, cin=16, cout=16, h=9, w=8, dilation=2, padding=2),
    "channels_not_multiple_of_tile": dict(n=3, cin=20, cout=12, h=4, w=9),
    "tiny_1x1_output": dict(n=1, cin=16, cout=16, h=1, w=1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_float32_matches_torchvision(case):
    p = _problem(**CASES[case])
    assert _relative_error(_ours(p), _reference(p)) < FP32_TOL


@pytest.mark.parametrize("case", ["dyhead_stride1", "dyhead_stride2_odd", "groups_and_dgroups"])
def test_float16_inputs_match_torchvision(case):
    p = _problem(**CASES[case], seed=1)
    got = _ours(p, torch.float16)
    assert got.dtype == torch.float16
    assert _relative_error(got, _reference(p, torch.float16)) < FP16_TOL


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_leading_offset_map_mode_matches_the_official_read(dtype):
    """DyHead's coarser level: the 10x12 map of level l drives the conv on level l+1 (5x6 output);
    each image's leading values are read as a (.., 5, 6) block."""
    p = _problem(n=2, cin=32, cout=32, h=5, w=6, map_hw=(10, 12), seed=2)
    got = _ours(p, dtype, offset_mode="leading")
    cast = {k: v.to(dtype).float() if isinstance(v, torch.Tensor) else v for k, v in p.items()}
    reference = deform_conv2d(
        cast["input"],
        read_leading_offset_map(cast["offset"], 5, 6),
        cast["weight"],
        cast["bias"],
        padding=1,
        mask=read_leading_offset_map(cast["mask"], 5, 6),
    )
    assert _relative_error(got, reference) < (FP32_TOL if dtype == torch.float32 else FP16_TOL)
    # and it is not the top-left crop of the map
    cropped = deform_conv2d(
        cast["input"], cast["offset"][..., :5, :6], cast["weight"], cast["bias"], padding=1,
        mask=cast["mask"][..., :5, :6],
    )  # fmt: skip
    assert _relative_error(got, cropped) > 1e-2


def test_leading_mode_on_a_same_size_map_is_the_ordinary_operator():
    p = _problem(n=1, cin=16, cout=16, h=5, w=6, seed=3)
    torch.testing.assert_close(_ours(p, offset_mode="leading"), _ours(p), rtol=0, atol=0)


def test_without_bias():
    p = _problem(n=1, cin=16, cout=16, h=6, w=6, seed=4)
    p["bias"] = None
    reference = deform_conv2d(p["input"], p["offset"], p["weight"], None, padding=1, mask=p["mask"])
    assert _relative_error(_ours(p), reference) < FP32_TOL


# Hand-checkable cases.


def test_zero_offsets_unit_mask_is_a_plain_convolution():
    x = torch.arange(2 * 16 * 5 * 5, dtype=torch.float32).reshape(2, 16, 5, 5) / 100
    weight = torch.ones(16, 16, 3, 3) / 144
    got = modulated_deform_conv(x, torch.zeros(2, 18, 5, 5), torch.ones(2, 9, 5, 5), weight, padding=1)
    torch.testing.assert_close(got, F.conv2d(x, weight, padding=1), rtol=1e-6, atol=1e-6)


def test_half_pixel_offset_averages_neighbours_and_mask_scales():
    # A 1x1 kernel sampling at x + 0.5 reads the mean of a pixel and its right neighbour (zero
    # beyond the border); the mask 0.5 halves it. Channel c holds value c * (column index).
    x = torch.arange(5.0).repeat(16, 1, 1).unsqueeze(0) * torch.arange(16.0).view(1, 16, 1, 1)  # [1,16,1,5]
    weight = torch.zeros(16, 16, 1, 1)
    weight[:, 1] = 1.0  # every output channel reads input channel 1: values 0, 1, 2, 3, 4
    offset = torch.zeros(1, 2, 1, 5)
    offset[:, 1] = 0.5
    got = modulated_deform_conv(x, offset, torch.full((1, 1, 1, 5), 0.5), weight)
    expected = torch.tensor([0.5, 1.5, 2.5, 3.5, 2.0]) * 0.5  # last: (4 + 0) / 2
    torch.testing.assert_close(got[0, :, 0], expected.expand(16, 5))


def test_sampling_outside_the_image_is_zero():
    x = torch.ones(1, 16, 3, 3)
    offset = torch.full((1, 18, 3, 3), 10.0)  # every point far outside
    got = modulated_deform_conv(x, offset, torch.ones(1, 9, 3, 3), torch.ones(16, 16, 3, 3), padding=1)
    assert torch.count_nonzero(got) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(offset_mode="crop"), "offset_mode"),
        (dict(groups=3), "groups"),
        (dict(stride=0), "stride"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    p = _problem(n=1, cin=16, cout=16, h=4, w=4)
    with pytest.raises(ValueError, match=message):
        modulated_deform_conv(p["input"], p["offset"], p["mask"], p["weight"], **kwargs)


def test_exact_mode_rejects_a_larger_map():
    p = _problem(n=1, cin=16, cout=16, h=4, w=4, map_hw=(8, 8))
    with pytest.raises(ValueError, match="leading"):
        modulated_deform_conv(p["input"], p["offset"], p["mask"], p["weight"], padding=1)


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    p = _problem(n=1, cin=16, cout=16, h=4, w=4)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        modulated_deform_conv(p["input"], p["offset"], p["mask"], p["weight"], padding=1)
