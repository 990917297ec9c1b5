"""The OpenVINO backend: the exported ONNX folder, read by OpenVINO with our DeformConv conversion,
agrees with PyTorch within the export's float32 verification tolerances."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torchvision.ops import deform_conv2d

from dyhead_serve import zoo
from dyhead_serve.data.sample_image import synthetic_photo
from dyhead_serve.export.onnx_export import export_onnx
from dyhead_serve.export.verify import Tolerances, compare_backends
from dyhead_serve.runtime.base import Backend, BackendError
from dyhead_serve.runtime.loader import load_backend, load_torch_backend
from dyhead_serve.runtime.options import ModelOptions
from tests.conftest import TINY_OVERRIDES

EMBEDDED_MODEL_DIR = Path(zoo.__file__).parent / "zoo_files" / "default"

ov = pytest.importorskip(
    "openvino", reason="openvino is not installed (pip install 'dyhead-serve[openvino]')"
)

from dyhead_serve.runtime.openvino_backend import OpenVinoBackend  # noqa: E402
from dyhead_serve.runtime.openvino_deform_conv import deform_conv_extension  # noqa: E402


def _deform_conv_graph(stride: int, padding: int, with_mask: bool) -> onnx.ModelProto:
    """One ONNX DeformConv node, every tensor a graph input of dynamic extents."""
    names = ["X", "W", "offset", "B"] + (["mask"] if with_mask else [])
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, ["c"] if n == "B" else ["n", "c", "h", "w"])
        for n in names
    ]
    node = helper.make_node(
        "DeformConv",
        names,
        ["Y"],
        dilations=[1, 1],
        group=1,
        kernel_shape=[3, 3],
        offset_group=2,
        pads=[padding] * 4,
        strides=[stride, stride],
    )
    output = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["n", "c", "h", "w"])
    graph = helper.make_graph([node], "deform_conv", inputs, [output])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


@pytest.mark.parametrize(("stride", "padding", "with_mask"), [(1, 1, True), (2, 1, True), (1, 0, False)])
def test_deform_conv_conversion_samples_the_border_as_torchvision(stride, padding, with_mask):
    """Offsets of up to 2.5 pixels put many samples within a pixel outside the feature map, which
    torchvision interpolates against zeros and OpenVINO's default sampling drops: the conversion
    must ask for torchvision's (bilinear_interpolation_pad)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 7, 9, generator=gen)
    weight = torch.randn(6, 4, 3, 3, generator=gen)
    bias = torch.randn(6, generator=gen)
    out_h, out_w = (7 + 2 * padding - 3) // stride + 1, (9 + 2 * padding - 3) // stride + 1
    offset = 2.5 * torch.randn(2, 2 * 2 * 9, out_h, out_w, generator=gen)
    mask = torch.rand(2, 2 * 9, out_h, out_w, generator=gen)
    expected = deform_conv2d(
        x, offset, weight, bias, stride=stride, padding=padding, mask=mask if with_mask else None
    )

    core = ov.Core()
    core.add_extension(deform_conv_extension())
    model = core.read_model(_deform_conv_graph(stride, padding, with_mask).SerializeToString(), b"")
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    feeds = [x, weight, offset, bias] + ([mask] if with_mask else [])
    got = torch.from_numpy(np.array(compiled([t.numpy() for t in feeds])[0]))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_backend(tiny_weights):
    return load_torch_backend("dyhead_r50_atss_fpn_1x", tiny_weights, device="cpu", overrides=TINY_OVERRIDES)


@pytest.fixture(scope="module")
def tiny_export(tiny_backend, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    export_onnx(tiny_backend, out, provenance={"weights_sha256": "test"})
    return out


def _assert_raw_outputs_close(
    reference: Backend, candidate: Backend, images: torch.Tensor, sizes: torch.Tensor
) -> None:
    """Raw outputs within the float32 verification tolerance, relative to max(1, max |output|)."""
    tolerance = Tolerances().raw
    expected, got = reference.infer(images, sizes), candidate.infer(images, sizes)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        scale = max(1.0, float(value.abs().max()))
        assert float((got[name] - value).abs().max()) <= tolerance * scale, name


def test_tiny_model_matches_pytorch_at_two_sizes_and_batch_two(tiny_backend, tiny_export):
    backend = OpenVinoBackend(tiny_export)
    assert (backend.name, backend.precision, backend.device.type) == ("openvino", "fp32", "cpu")
    assert backend.class_names == tiny_backend.class_names
    # 256x256 and a 200x300 photo resized to 256x384: two padded input sizes, one compiled model.
    for height, width in [(256, 256), (200, 300)]:
        report = compare_backends(tiny_backend, backend, synthetic_photo(height, width, seed=3))
        assert report.ok, report.format()
    torch.manual_seed(0)
    images = torch.randn(2, 3, 384, 256)
    sizes = torch.tensor([[384, 256], [300, 200]])
    _assert_raw_outputs_close(tiny_backend, backend, images, sizes)


def test_models_compiled_per_shape_match_pytorch_and_the_least_recent_is_dropped(tiny_backend, tiny_export):
    backend = OpenVinoBackend(tiny_export, compiled_shapes=2)
    torch.manual_seed(2)
    shapes = [(1, 3, 256, 256), (2, 3, 256, 384), (1, 3, 256, 256), (1, 3, 384, 256)]
    for shape in shapes:
        sizes = torch.tensor([list(shape[2:])] * shape[0])
        _assert_raw_outputs_close(tiny_backend, backend, torch.randn(*shape), sizes)
    # Of the three shapes, 256x384 at batch 2 was used least recently: dropped.
    assert [key[0] for key in backend._by_shape] == [(1, 3, 256, 256), (1, 3, 384, 256)]
    with pytest.raises(BackendError, match="compiled_shapes"):
        OpenVinoBackend(tiny_export, compiled_shapes=-1)


def test_embedded_default_model_matches_pytorch():
    reference = load_backend(ModelOptions("default", backend="torch", device="cpu"))
    backend = OpenVinoBackend(EMBEDDED_MODEL_DIR, threads=1)
    assert backend._dynamic.get_compiled_model().get_property("INFERENCE_NUM_THREADS") == 1
    report = compare_backends(reference, backend, synthetic_photo(300, 400, seed=1))
    assert report.ok, report.format()
    torch.manual_seed(1)
    _assert_raw_outputs_close(reference, backend, torch.randn(2, 3, 256, 384), torch.tensor([[256, 384]] * 2))


def test_refuses_cuda_and_a_folder_without_model_onnx(tmp_path):
    with pytest.raises(BackendError, match="runs on the CPU"):
        OpenVinoBackend(EMBEDDED_MODEL_DIR, device="cuda")
    with pytest.raises(BackendError, match=r"no model\.onnx"):
        OpenVinoBackend(tmp_path)


def test_backend_openvino_runs_an_exported_folder_and_the_embedded_model(tiny_export):
    backend = load_backend(ModelOptions(tiny_export, backend="openvino", device="cpu", threads=1))
    assert isinstance(backend, OpenVinoBackend) and backend.model_dir == tiny_export
    embedded = load_backend(ModelOptions(backend="openvino", device="auto"))
    assert isinstance(embedded, OpenVinoBackend) and embedded.model_dir == EMBEDDED_MODEL_DIR
    with pytest.raises(BackendError, match="runs on the CPU"):
        load_backend(ModelOptions(tiny_export, backend="openvino", device="cuda"))


def test_backend_openvino_runs_a_config_from_the_onnx_export_cache(tiny_weights, tmp_path, monkeypatch):
    """A config with weights: exported once into the cache (a child `dyhead-export onnx`, verified
    against PyTorch), then OpenVINO and ONNX Runtime both run that one cached model.onnx."""
    from dyhead_serve.runtime import export_cache

    monkeypatch.setenv("DYHEAD_SERVE_CACHE", str(tmp_path))
    options = ModelOptions(
        config="dyhead_r50_atss_fpn_1x",
        weights=tiny_weights,
        overrides=tuple(TINY_OVERRIDES),
        backend="openvino",
        device="cpu",
    )
    first = load_backend(options)
    assert isinstance(first, OpenVinoBackend)
    assert first.model_dir.parent == tmp_path / "onnx"

    def no_export(command: object) -> int:
        raise AssertionError("the second load must reuse the cached export")

    monkeypatch.setattr(export_cache, "run_exporter", no_export)
    second = load_backend(options)
    onnxruntime = load_backend(ModelOptions(**{**options.__dict__, "backend": "onnxruntime"}))
    assert second.model_dir == first.model_dir == onnxruntime.model_dir  # type: ignore[attr-defined]
    reference = load_backend(ModelOptions(**{**options.__dict__, "backend": "torch"}))
    report = compare_backends(reference, second, synthetic_photo(256, 256, seed=3))
    assert report.ok, report.format()
