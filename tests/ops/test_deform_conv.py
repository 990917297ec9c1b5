"""Modulated deformable convolution against a direct loop, including the official
larger-offset-map read."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dyhead_serve.ops import (
    ModulatedDeformConv2d,
    deform_conv,
    modulated_deform_conv2d,
    read_leading_offset_map,
    use_dcn_kernel,
)


def _bilinear(img: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """img [C, H, W]; zero outside, as the DCN kernels do."""
    c, h, w = img.shape
    if y <= -1 or y >= h or x <= -1 or x >= w:
        return torch.zeros(c, dtype=img.dtype)
    y0, x0 = math.floor(y), math.floor(x)
    out = torch.zeros(c, dtype=img.dtype)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * img[:, yy, xx]
    return out


def _direct(inp, offset_buffers, mask_buffers, weight, bias, stride, padding):
    """Loop over outputs; offset_buffers[b] / mask_buffers[b] are flat per-image buffers read as
    (2*K, Ho, Wo) and (K, Ho, Wo) from their start, as the official kernel does."""
    n, _, h, w = inp.shape
    cout, _, kh, kw = weight.shape
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (w + 2 * padding - kw) // stride + 1
    out = torch.zeros(n, cout, ho, wo, dtype=torch.float64)
    for b in range(n):
        off = offset_buffers[b][: 2 * kh * kw * ho * wo].reshape(2 * kh * kw, ho, wo)
        msk = mask_buffers[b][: kh * kw * ho * wo].reshape(kh * kw, ho, wo)
        for oy in range(ho):
            for ox in range(wo):
                acc = torch.zeros(cout, dtype=torch.float64)
                for i in range(kh):
                    for j in range(kw):
                        k = i * kw + j
                        y = oy * stride - padding + i + off[2 * k, oy, ox].item()
                        x = ox * stride - padding + j + off[2 * k + 1, oy, ox].item()
                        val = _bilinear(inp[b].double(), y, x) * msk[k, oy, ox].item()
                        acc += weight[:, :, i, j].double() @ val
                out[b, :, oy, ox] = acc + (bias.double() if bias is not None else 0)
    return out


def test_zero_offsets_unit_mask_is_a_plain_convolution():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 7, 9)
    weight = torch.randn(5, 4, 3, 3)
    bias = torch.randn(5)
    offset = torch.zeros(2, 18, 7, 9)
    mask = torch.ones(2, 9, 7, 9)
    got = modulated_deform_conv2d(x, offset, mask, weight, bias, stride=1, padding=1)
    torch.testing.assert_close(got, F.conv2d(x, weight, bias, padding=1), rtol=1e-5, atol=1e-5)


def test_integer_offset_shifts_the_sampling_point():
    # A 1x1 kernel with dx = +1 everywhere reads the right neighbour (zero past the border).
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    weight = torch.ones(1, 1, 1, 1)
    offset = torch.zeros(1, 2, 3, 4)
    offset[:, 1] = 1.0
    mask = torch.full((1, 1, 3, 4), 0.5)
    got = modulated_deform_conv2d(x, offset, mask, weight)
    expected = torch.tensor([[1.0, 2.0, 3.0, 0.0], [5.0, 6.0, 7.0, 0.0], [9.0, 10.0, 11.0, 0.0]]) * 0.5
    torch.testing.assert_close(got[0, 0], expected)


@pytest.mark.parametrize("stride", [1, 2])
def test_matches_direct_loop_same_size_map(stride):
    torch.manual_seed(1)
    n, cin, cout, h, w = 2, 3, 4, 6, 5
    x = torch.randn(n, cin, h, w)
    weight = torch.randn(cout, cin, 3, 3)
    bias = torch.randn(cout)
    ho, wo = (h + 2 - 3) // stride + 1, (w + 2 - 3) // stride + 1
    offset_mask = torch.randn(n, 27, ho, wo) * 1.5
    offset = offset_mask[:, :18]
    mask = offset_mask[:, 18:].sigmoid()
    got = modulated_deform_conv2d(x, offset, mask, weight, bias, stride=stride, padding=1)
    expected = _direct(
        x,
        [offset[b].reshape(-1) for b in range(n)],
        [mask[b].reshape(-1) for b in range(n)],
        weight,
        bias,
        stride,
        1,
    )
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_larger_offset_map_reads_each_images_leading_values():
    """DyHead's coarser-level conv: a 6x8 offset map applied to a 3x4 input (output 3x4)."""
    torch.manual_seed(2)
    n, cin, cout = 2, 3, 2
    x = torch.randn(n, cin, 3, 4)
    weight = torch.randn(cout, cin, 3, 3)
    bias = torch.randn(cout)
    offset_mask = torch.randn(n, 27, 6, 8)
    offset = offset_mask[:, :18]  # a non-contiguous slice, as in DyConv
    mask = offset_mask[:, 18:].sigmoid()
    got = modulated_deform_conv2d(x, offset, mask, weight, bias, stride=1, padding=1)
    # The official kernel starts at offset[b]'s first element and reads 18*3*4 = 216 values in
    # memory order of the (18, 6, 8) block: the first 4.5 channels' worth, not a top-left crop.
    offset_buffers = [offset[b].contiguous().reshape(-1) for b in range(n)]
    mask_buffers = [mask[b].reshape(-1) for b in range(n)]
    expected = _direct(x, offset_buffers, mask_buffers, weight, bias, 1, 1)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    # It is not the same as cropping the top-left corner of the map.
    cropped = modulated_deform_conv2d(x, offset[:, :, :3, :4], mask[:, :, :3, :4], weight, bias, padding=1)
    assert (cropped - got).abs().max() > 1e-2


def test_read_leading_offset_map_by_hand():
    values = torch.arange(2 * 2 * 2 * 3.0).reshape(2, 2, 2, 3)  # N=2, C=2, 2x3 map
    got = read_leading_offset_map(values, 1, 2)  # needs C*1*2 = 4 values per image
    assert got.tolist() == [[[[0.0, 1.0]], [[2.0, 3.0]]], [[[12.0, 13.0]], [[14.0, 15.0]]]]
    assert read_leading_offset_map(values, 2, 3) is values
    with pytest.raises(ValueError, match="smaller"):
        read_leading_offset_map(values, 3, 3)


def test_module_names_and_shapes():
    conv = ModulatedDeformConv2d(8, 16, kernel_size=3, stride=2, padding=1)
    assert {k: tuple(v.shape) for k, v in conv.state_dict().items()} == {
        "weight": (16, 8, 3, 3),
        "bias": (16,),
    }
    out = conv(torch.randn(1, 8, 10, 10), torch.zeros(1, 18, 5, 5), torch.ones(1, 9, 5, 5))
    assert out.shape == (1, 16, 5, 5)


@pytest.mark.parametrize("bad", ["offset", "mask"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_training_mode_refuses_non_finite_offsets_instead_of_crashing(bad: str, value: float) -> None:
    """torchvision's CPU deform_conv2d segfaults on NaN/inf offsets; in training the layer raises."""
    conv = ModulatedDeformConv2d(2, 3).train()
    inputs = {"offset": torch.zeros(1, 18, 4, 4), "mask": torch.ones(1, 9, 4, 4)}
    inputs[bad][0, 5, 2, 1] = value
    with pytest.raises(
        FloatingPointError, match=r"non-finite offsets in deformable conv ModulatedDeformConv2d\(2, 3"
    ):
        conv(torch.randn(1, 2, 4, 4), inputs["offset"], inputs["mask"])


def test_only_training_mode_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    # The ONNX export traces eval mode: its graph must stay free of the check.
    checked: list[str] = []
    monkeypatch.setattr(
        deform_conv, "check_finite_offsets", lambda offset, mask, layer: checked.append(layer)
    )
    conv = ModulatedDeformConv2d(2, 3)
    args = (torch.randn(1, 2, 4, 4), torch.zeros(1, 18, 4, 4), torch.ones(1, 9, 4, 4))
    conv.eval()(*args)
    assert checked == []
    conv.train()(*args)
    assert len(checked) == 1


# -- the CPU training path: grid_sample + matmul ----------------------------------------------


def _dcn_inputs(n, cin, cout, h, w, stride, dilation, seed=0):
    g = torch.Generator().manual_seed(seed)
    out_h = (h + 2 - 2 * dilation - 1) // stride + 1
    out_w = (w + 2 - 2 * dilation - 1) // stride + 1
    return (
        torch.randn(n, cin, h, w, generator=g, dtype=torch.float64),
        3 * torch.randn(n, 18, out_h, out_w, generator=g, dtype=torch.float64),  # many fall outside
        torch.rand(n, 9, out_h, out_w, generator=g, dtype=torch.float64),
        torch.randn(cout, cin, 3, 3, generator=g, dtype=torch.float64),
        torch.randn(cout, generator=g, dtype=torch.float64),
    )


@pytest.mark.parametrize(
    ("h", "w", "stride", "dilation"),
    [(9, 11, 1, 1), (9, 11, 2, 1), (10, 7, 1, 2), (1, 5, 1, 1), (4, 1, 2, 1)],
)
def test_sampling_path_matches_torchvision_values_and_gradients(h, w, stride, dilation) -> None:
    from torchvision.ops import deform_conv2d

    tensors = _dcn_inputs(2, 3, 4, h, w, stride, dilation)
    results = []
    for use_sampling in (False, True):
        leaves = [t.clone().requires_grad_() for t in tensors]
        x, offset, mask, weight, bias = leaves
        if use_sampling:
            y = deform_conv.deform_conv2d_by_sampling(
                x, offset, mask, weight, bias, (stride, stride), (1, 1), (dilation, dilation)
            )
        else:
            y = deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, dilation=dilation, mask=mask)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        results.append((y.detach(), [leaf.grad for leaf in leaves]))
    (y_tv, grads_tv), (y_gs, grads_gs) = results
    torch.testing.assert_close(y_gs, y_tv, rtol=1e-10, atol=1e-10)
    names = ("input", "offset", "mask", "weight", "bias")
    for name, g_gs, g_tv in zip(names, grads_gs, grads_tv, strict=True):
        torch.testing.assert_close(g_gs, g_tv, rtol=1e-9, atol=1e-9, msg=f"gradient of {name} differs")


def test_cpu_training_uses_the_sampling_path_and_inference_torchvision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    real = deform_conv.deform_conv2d_by_sampling
    monkeypatch.setattr(
        deform_conv, "deform_conv2d_by_sampling", lambda *a: calls.append("sampling") or real(*a)
    )
    layer = ModulatedDeformConv2d(3, 4, 3, padding=1)
    x, offset, mask, _, _ = _dcn_inputs(1, 3, 4, 6, 6, 1, 1)
    x, offset, mask = x.float(), offset.float(), mask.float()
    layer.train()
    trained = layer(x, offset, mask)
    assert calls == ["sampling"]
    with torch.no_grad():
        inferred = layer(x, offset, mask)
    layer.eval()
    evaluated = layer(x.requires_grad_(), offset, mask)  # eval with autograd still trains the layer
    assert calls == ["sampling", "sampling"]
    from torchvision.ops import deform_conv2d

    with torch.no_grad():
        expected = deform_conv2d(x, offset, layer.weight, layer.bias, padding=1, mask=mask)
    assert torch.equal(inferred, expected)  # inference: torchvision, bit for bit
    torch.testing.assert_close(trained.detach(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(evaluated.detach(), expected, rtol=1e-5, atol=1e-5)

    with use_dcn_kernel("torchvision"):  # DYHEAD_DCN_KERNEL=torchvision: bit-exact training
        layer.train()
        assert torch.equal(layer(x, offset, mask), expected)
    assert calls == ["sampling", "sampling"]


def test_the_training_dispatch_back_propagates_like_torchvision() -> None:
    """Through modulated_deform_conv2d (where the sampling path is recomputed in backward
    instead of keeping its columns), including the official read of a larger offset map."""
    x, _, _, weight, bias = _dcn_inputs(2, 3, 4, 7, 9, 1, 1)
    g = torch.Generator().manual_seed(1)
    offset = 2 * torch.randn(2, 18, 14, 18, generator=g, dtype=torch.float64)  # a finer level's map
    mask = torch.rand(2, 9, 14, 18, generator=g, dtype=torch.float64)
    results = []
    for kernel in ("auto", "torchvision"):
        leaves = [t.clone().requires_grad_() for t in (x, offset, mask, weight, bias)]
        with use_dcn_kernel(kernel):
            y = modulated_deform_conv2d(*leaves, padding=1)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        results.append((y.detach(), [leaf.grad for leaf in leaves]))
    (y_auto, grads_auto), (y_tv, grads_tv) = results
    torch.testing.assert_close(y_auto, y_tv, rtol=1e-10, atol=1e-10)
    for g_auto, g_tv in zip(grads_auto, grads_tv, strict=True):
        torch.testing.assert_close(g_auto, g_tv, rtol=1e-9, atol=1e-9)


def test_the_triton_kernel_runs_in_autocasts_dtype() -> None:
    """Under autocast a DyHead conv gets float16 activations with float32 weights and offsets; the
    Triton kernel takes one dtype, so all are cast to autocast's (as for a convolution)."""
    x = torch.randn(1, 4, 5, 5)
    assert deform_conv.kernel_dtype(x) == torch.float32
    assert deform_conv.kernel_dtype(x.half()) == torch.float16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert deform_conv.kernel_dtype(x) == torch.bfloat16
