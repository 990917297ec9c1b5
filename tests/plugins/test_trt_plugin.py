"""The kernel on a GPU and the TensorRT plugin in an engine (skipped without a GPU / TensorRT)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import deform_conv2d

from tests.hardware import needs_gpu, needs_tensorrt


def _problem(dtype: torch.dtype, map_hw: tuple[int, int] | None = None, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    n, cin, cout, h, w = 2, 64, 64, 25, 34
    mh, mw = map_hw or (h, w)
    tensors = {
        "input": torch.randn(n, cin, h, w, generator=gen),
        "offset": torch.randn(n, 18, mh, mw, generator=gen) * 2,
        "mask": torch.rand(n, 9, mh, mw, generator=gen),
        "weight": torch.randn(cout, cin, 3, 3, generator=gen) / 24,
        "bias": torch.randn(cout, generator=gen),
    }
    return {k: v.to(dtype).cuda() for k, v in tensors.items()}


def _reference(p: dict, out_hw: tuple[int, int]) -> torch.Tensor:
    from dyhead_serve.ops import read_leading_offset_map

    f = {k: v.float() for k, v in p.items()}
    offset = read_leading_offset_map(f["offset"], *out_hw)
    mask = read_leading_offset_map(f["mask"], *out_hw)
    return deform_conv2d(f["input"], offset, f["weight"], f["bias"], padding=1, mask=mask)


def _relative_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    return float((got.double() - reference.double()).abs().max() / reference.double().abs().max())


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)]
)
def test_cuda_kernel_matches_torchvision(dtype, tol):
    from dyhead_serve.plugins import modulated_deform_conv
    from dyhead_serve.plugins.mdcn_kernel import TILES

    if dtype == torch.bfloat16 and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bfloat16 needs sm_80 or newer")
    p = _problem(dtype)
    reference = _reference(p, (25, 34))
    for tile in TILES:
        got = modulated_deform_conv(**p, padding=1, tile=tile)
        assert _relative_error(got, reference) < tol, tile
    leading = _problem(dtype, map_hw=(50, 68))
    got = modulated_deform_conv(**leading, padding=1, offset_mode="leading")
    assert _relative_error(got, _reference(leading, (25, 34))) < tol


def _run_plugin_engine(p: dict, aot: bool) -> torch.Tensor:
    """Build a one-layer engine around the plugin (strongly typed: the inputs' dtype decides)."""
    import tensorrt as trt
    import tensorrt.plugin as trtp

    import dyhead_serve.plugins.trt_plugin  # noqa: F401  (registers the plugin)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    dtypes = {torch.float32: trt.float32, torch.float16: trt.float16}
    inputs = [network.add_input(name, dtypes[t.dtype], tuple(t.shape)) for name, t in p.items()]
    pairs = {k: np.array([v, v], dtype=np.int32) for k, v in (("stride", 1), ("padding", 1), ("dilation", 1))}
    layer = network.add_plugin(
        trtp.op.dyhead.ModulatedDeformConv2d(*inputs, **pairs, groups=1, deformable_groups=1), aot=aot
    )
    layer.get_output(0).name = "output"
    network.mark_output(layer.get_output(0))
    config = builder.create_builder_config()
    engine = trt.Runtime(logger).deserialize_cuda_engine(builder.build_serialized_network(network, config))
    context = engine.create_execution_context()
    output = torch.empty(tuple(context.get_tensor_shape("output")), dtype=p["input"].dtype, device="cuda")
    for name, tensor in p.items():
        context.set_tensor_address(name, tensor.data_ptr())
    context.set_tensor_address("output", output.data_ptr())
    stream = torch.cuda.Stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return output


@pytest.mark.tensorrt
@needs_tensorrt
def test_plugin_is_registered():
    import tensorrt as trt

    import dyhead_serve.plugins.trt_plugin  # noqa: F401

    creator = trt.get_plugin_registry().get_creator("ModulatedDeformConv2d", "1", "dyhead")
    assert creator is not None


@pytest.mark.tensorrt
@needs_tensorrt
@pytest.mark.parametrize("aot", [True, False], ids=["aot", "jit"])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float16, 2e-3)])
def test_plugin_engine_matches_torchvision(aot, dtype, tol):
    p = _problem(dtype)
    assert _relative_error(_run_plugin_engine(p, aot), _reference(p, (25, 34))) < tol


@pytest.mark.tensorrt
@needs_tensorrt
def test_plugin_engine_reads_a_larger_map_like_the_official_kernel():
    p = _problem(torch.float32, map_hw=(50, 68))
    assert _relative_error(_run_plugin_engine(p, aot=True), _reference(p, (25, 34))) < 1e-5
