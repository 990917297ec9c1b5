"""The TensorRT plugin in engines (skipped without TensorRT and a GPU): registration, one-layer
engines (AOT and JIT) against torchvision, and one engine whose plugin layers need different kernel
specialisations (dtypes, kernel sizes, shapes) side by side."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torchvision.ops import deform_conv2d

from tests.hardware import needs_tensorrt

pytestmark = [pytest.mark.tensorrt, needs_tensorrt]


@dataclass(frozen=True)
class Layer:
    """One plugin layer: input [n, cin, h, w], a k x k kernel, an offset map of map_hw or the
    output's size."""

    n: int
    cin: int
    cout: int
    h: int
    w: int
    dtype: torch.dtype
    k: int = 3
    stride: int = 1
    map_hw: tuple[int, int] | None = None

    @property
    def padding(self) -> int:
        return self.k // 2

    @property
    def out_hw(self) -> tuple[int, int]:
        def out(size: int) -> int:
            return (size + 2 * self.padding - self.k) // self.stride + 1

        return out(self.h), out(self.w)

    def tensors(self, seed: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        mh, mw = self.map_hw or self.out_hw
        points = self.k * self.k
        tensors = {
            "input": torch.randn(self.n, self.cin, self.h, self.w, generator=gen),
            "offset": torch.randn(self.n, 2 * points, mh, mw, generator=gen) * 2,
            "mask": torch.rand(self.n, points, mh, mw, generator=gen),
            "weight": torch.randn(self.cout, self.cin, self.k, self.k, generator=gen)
            / (self.cin * points) ** 0.5,
            "bias": torch.randn(self.cout, generator=gen),
        }
        return {name: t.to(self.dtype).cuda() for name, t in tensors.items()}

    def reference(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """torchvision in float32 on the same rounded values, reading a larger map's leading values."""
        from dyhead_serve.ops import read_leading_offset_map

        f = {k: v.float() for k, v in tensors.items()}
        offset = read_leading_offset_map(f["offset"], *self.out_hw)
        mask = read_leading_offset_map(f["mask"], *self.out_hw)
        return deform_conv2d(
            f["input"], offset, f["weight"], f["bias"],
            stride=self.stride, padding=self.padding, mask=mask,
        )  # fmt: skip


TOLERANCES = {torch.float32: 1e-5, torch.float16: 2e-3}


def _relative_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    return float((got.double() - reference.double()).abs().max() / reference.double().abs().max())


def _run_plugin_engine(
    layers: list[Layer], aot: bool = True
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]], list[str]]:
    """Build one strongly typed engine with a plugin layer per entry (the inputs' dtype decides
    each layer's), run it once; (outputs, inputs, the engine's layer descriptions)."""
    import tensorrt as trt
    import tensorrt.plugin as trtp

    import dyhead_serve.plugins.trt_plugin  # noqa: F401  (registers the plugin)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    dtypes = {torch.float32: trt.float32, torch.float16: trt.float16}
    feeds, inputs = {}, []
    for index, layer in enumerate(layers):
        tensors = layer.tensors(seed=index)
        inputs.append(tensors)
        bound = []
        for name, tensor in tensors.items():
            feeds[f"{name}{index}"] = tensor
            bound.append(network.add_input(f"{name}{index}", dtypes[tensor.dtype], tuple(tensor.shape)))
        pairs = {
            "stride": np.array([layer.stride] * 2, dtype=np.int32),
            "padding": np.array([layer.padding] * 2, dtype=np.int32),
            "dilation": np.array([1, 1], dtype=np.int32),
        }
        plugin = trtp.op.dyhead.ModulatedDeformConv2d(*bound, **pairs, groups=1, deformable_groups=1)
        output = network.add_plugin(plugin, aot=aot).get_output(0)
        output.name = f"output{index}"
        network.mark_output(output)
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    engine = trt.Runtime(logger).deserialize_cuda_engine(builder.build_serialized_network(network, config))
    context = engine.create_execution_context()
    outputs = []
    for index, layer in enumerate(layers):
        shape = tuple(context.get_tensor_shape(f"output{index}"))
        outputs.append(torch.empty(shape, dtype=layer.dtype, device="cuda"))
        context.set_tensor_address(f"output{index}", outputs[-1].data_ptr())
    for name, tensor in feeds.items():
        context.set_tensor_address(name, tensor.data_ptr())
    stream = torch.cuda.Stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    inspector = engine.create_engine_inspector()
    described = [
        inspector.get_layer_information(i, trt.LayerInformationFormat.ONELINE)
        for i in range(engine.num_layers)
    ]
    return outputs, inputs, described


def test_plugin_is_registered():
    import tensorrt as trt

    import dyhead_serve.plugins.trt_plugin  # noqa: F401

    creator = trt.get_plugin_registry().get_creator("ModulatedDeformConv2d", "1", "dyhead")
    assert creator is not None


def test_standard_plugins_provide_the_deformconv_creator():
    """What the ONNX parser builds DeformConv nodes from (registered by init_standard_plugins)."""
    import tensorrt as trt

    from dyhead_serve.runtime.tensorrt_compat import init_standard_plugins

    init_standard_plugins(trt, trt.Logger(trt.Logger.WARNING))
    creators = [(c.name, c.plugin_namespace) for c in trt.get_plugin_registry().all_creators]
    assert ("ModulatedDeformConv2d", "") in creators


@pytest.mark.parametrize("aot", [True, False], ids=["aot", "jit"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_plugin_engine_matches_torchvision(aot, dtype):
    layer = Layer(2, 64, 64, 25, 34, dtype)
    (output,), (inputs,), _ = _run_plugin_engine([layer], aot)
    assert _relative_error(output, layer.reference(inputs)) < TOLERANCES[dtype]


def test_plugin_engine_reads_a_larger_map_like_the_official_kernel():
    layer = Layer(2, 64, 64, 25, 34, torch.float32, map_hw=(50, 68))
    (output,), (inputs,), _ = _run_plugin_engine([layer])
    assert _relative_error(output, layer.reference(inputs)) < TOLERANCES[torch.float32]


def test_one_engine_holds_layers_of_different_specialisations():
    """Each (dtype, tile, kernel size) specialisation is its own PTX entry: an engine whose plugin
    layers differ in dtype, kernel size and size (so TensorRT's timing may pick other tiles for
    them) loads them side by side and runs each correctly."""
    layers = [
        Layer(2, 64, 64, 25, 34, torch.float32),
        Layer(2, 64, 64, 25, 34, torch.float16),
        Layer(1, 256, 256, 100, 152, torch.float16),  # a DyHead P3-like size: larger tiles pay
        Layer(2, 48, 40, 23, 37, torch.float16, k=1),
        Layer(1, 32, 96, 40, 56, torch.float32, stride=2),
        Layer(1, 64, 64, 20, 28, torch.float32, map_hw=(40, 56)),
    ]
    outputs, inputs, described = _run_plugin_engine(layers)
    print("\n".join(described))  # the tactics TensorRT chose, for the record (pytest -rA / -s)
    for layer, output, tensors in zip(layers, outputs, inputs, strict=True):
        assert _relative_error(output, layer.reference(tensors)) < TOLERANCES[layer.dtype], layer
