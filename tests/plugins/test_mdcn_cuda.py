"""The Triton kernel on a CUDA GPU against torchvision's deform_conv2d: every tile at every dtype,
at sizes that are no multiple of any tile and at one large DyHead-like case, and through the
PyTorch path under autocast (skipped without a GPU).

Error is max |got - reference| / max |reference|; the reference is torchvision in float32 on the
same (rounded) inputs. Each case records its error as the ``relative_error`` property, which
``benchmarks/gpu_check.sh`` reads back from pytest's JUnit XML into its report.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import deform_conv2d

from dyhead_serve.plugins import modulated_deform_conv
from dyhead_serve.plugins.mdcn_kernel import TILES
from tests.hardware import needs_gpu

pytestmark = [pytest.mark.gpu, needs_gpu]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOLERANCES = {"fp32": 1e-5, "fp16": 2e-3, "bf16": 2e-2}
# (n, cin, cout, h, w, stride, map size or None): pixels, input and output channels that are no
# multiple of any tile (tiles are 64/128 pixels, 64/128 output and 32 input channels), stride 2,
# the larger offset map of DyHead's coarser level, and one large case at a DyHead P3 size.
CASES = {
    "odd": (3, 48, 40, 23, 37, 1, None),
    "odd_stride2": (2, 40, 72, 29, 19, 2, None),
    "leading_map": (2, 64, 64, 13, 17, 1, (26, 34)),
    "large": (8, 256, 256, 176, 176, 1, None),
}


def _problem(case: str, dtype: torch.dtype, seed: int = 0) -> dict:
    n, cin, cout, h, w, stride, map_hw = CASES[case]
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1  # 3x3, padding 1
    mh, mw = map_hw or (ho, wo)
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device="cuda")

    tensors = {
        "input": randn(n, cin, h, w),
        "offset": randn(n, 18, mh, mw) * 2,
        "mask": randn(n, 9, mh, mw).sigmoid(),
        "weight": randn(cout, cin, 3, 3) / (cin * 9) ** 0.5,
        "bias": randn(cout),
    }
    return {k: v.to(dtype) for k, v in tensors.items()} | {"stride": stride, "out_hw": (ho, wo)}


def _reference(p: dict) -> torch.Tensor:
    """torchvision in float32 on the same rounded values, reading a larger map's leading values."""
    from dyhead_serve.ops import read_leading_offset_map

    f = {k: v.float() for k, v in p.items() if isinstance(v, torch.Tensor)}
    offset = read_leading_offset_map(f["offset"], *p["out_hw"])
    mask = read_leading_offset_map(f["mask"], *p["out_hw"])
    return deform_conv2d(f["input"], offset, f["weight"], f["bias"], stride=p["stride"], padding=1, mask=mask)


def _relative_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    return float((got.double() - reference.double()).abs().max() / reference.double().abs().max())


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("tile", TILES, ids=[t.name for t in TILES])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_every_tile_and_dtype_matches_torchvision(dtype, tile, case, record_property):
    if dtype == "bf16" and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bfloat16 needs sm_80 or newer")
    p = _problem(case, DTYPES[dtype])
    got = modulated_deform_conv(
        p["input"], p["offset"], p["mask"], p["weight"], p["bias"],
        stride=p["stride"], padding=1, offset_mode="leading", tile=tile,
    )  # fmt: skip
    assert got.dtype == DTYPES[dtype] and tuple(got.shape[-2:]) == p["out_hw"]
    error = _relative_error(got, _reference(p))
    record_property("relative_error", f"{error:.3g}")
    record_property("tolerance", TOLERANCES[dtype])
    assert error < TOLERANCES[dtype]


def test_the_torch_path_under_fp16_autocast_runs_the_kernel_like_torchvision():
    """float16 activations, float32 weights and offsets (what autocast gives a DyHead conv): the
    Triton path casts them to float16 as autocast casts a convolution's operands."""
    from dyhead_serve.ops import ModulatedDeformConv2d, use_dcn_kernel

    gen = torch.Generator(device="cuda").manual_seed(3)
    conv = ModulatedDeformConv2d(64, 64, kernel_size=3, padding=1).cuda().eval()
    x = torch.randn(2, 64, 23, 37, generator=gen, device="cuda").half()
    offset = torch.randn(2, 18, 23, 37, generator=gen, device="cuda") * 2
    mask = torch.randn(2, 9, 23, 37, generator=gen, device="cuda").sigmoid()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        with use_dcn_kernel("triton"):
            got = conv(x, offset, mask)
        with use_dcn_kernel("torchvision"):
            reference = conv(x, offset, mask)
    assert got.dtype == torch.float16
    assert _relative_error(got, reference.float()) < TOLERANCES["fp16"]
