"""One interface, three places: plugins/schema.py, the QDP registration in plugins/trt_plugin.py
and the nodes the ONNX exporter writes. The registration is read from the source, so this runs
without TensorRT."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from dyhead_serve import plugins
from dyhead_serve.ops import ModulatedDeformConv2d
from dyhead_serve.ops.onnx_symbolic import deform_conv_onnx_symbolic
from dyhead_serve.plugins.mdcn_kernel import SCALAR_ARGS
from dyhead_serve.plugins.schema import MDCN_SCHEMA

SOURCE = Path(plugins.__file__).with_name("trt_plugin.py")
ANNOTATION_OF_KIND = {"ints": "npt.NDArray[np.int32]", "int": "int"}


def _decorated(decorator: str) -> ast.FunctionDef:
    """The function in trt_plugin.py decorated with ``@trtp.<decorator>(PLUGIN_ID)``."""
    for node in ast.parse(SOURCE.read_text()).body:
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call) and ast.unparse(dec.func) == f"trtp.{decorator}":
                    assert ast.unparse(dec.args[0]) == "PLUGIN_ID"
                    return node
    raise AssertionError(f"no @trtp.{decorator} in {SOURCE}")


def _params(fn: ast.FunctionDef) -> list[tuple[str, str]]:
    return [(a.arg, ast.unparse(a.annotation) if a.annotation else "") for a in fn.args.args]


def _attribute_params() -> list[tuple[str, str]]:
    return [(a.name, ANNOTATION_OF_KIND[a.kind]) for a in MDCN_SCHEMA.attributes]


def test_registration_declares_the_schema():
    assert MDCN_SCHEMA.qualified_name == "dyhead::ModulatedDeformConv2d"
    expected = [(name, "trtp.TensorDesc") for name in MDCN_SCHEMA.inputs] + _attribute_params()
    register = _decorated("register")
    assert _params(register) == expected
    assert ast.unparse(register.returns) == "trtp.TensorDesc"  # one output
    assert len(MDCN_SCHEMA.outputs) == 1


def test_implementations_follow_tensorrts_argument_schema():
    """TensorRT checks these orders when the module is imported: tensors, attributes (all of them:
    the AOT launcher passes every attribute), outputs, then stream/tactic."""
    tensors = [(name, "trtp.TensorDesc") for name in MDCN_SCHEMA.inputs]
    attrs = _attribute_params()
    assert _params(_decorated("aot_impl")) == [
        *tensors, *attrs, ("outputs", "tuple[trtp.TensorDesc]"), ("tactic", "int")
    ]  # fmt: skip
    jit_tensors = [(name, "trtp.Tensor") for name in MDCN_SCHEMA.inputs]
    assert _params(_decorated("impl")) == [
        *jit_tensors, *attrs, ("outputs", "tuple[trtp.Tensor]"), ("stream", "int"), ("tactic", "int")
    ]  # fmt: skip
    assert _params(_decorated("autotune")) == [*tensors, ("outputs", "tuple[trtp.TensorDesc]")]
    aot_return = ast.unparse(_decorated("aot_impl").returns)
    assert aot_return == "tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]"


def test_aot_impl_compiles_for_the_building_gpus_architecture():
    """compile_ptx without ``arch`` would have Triton query the driver (and build its cuda_utils
    extension) inside the builder callback."""
    calls = [
        node
        for node in ast.walk(_decorated("aot_impl"))
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "compile_ptx"
    ]
    assert len(calls) == 1
    arch = {k.arg: ast.unparse(k.value) for k in calls[0].keywords}.get("arch")
    assert arch == "current_arch()"


def test_trt_plugin_does_not_postpone_annotations():
    # TensorRT calls issubclass() on the annotations: they must be objects, not strings.
    imports = [n for n in ast.parse(SOURCE.read_text()).body if isinstance(n, ast.ImportFrom)]
    assert not [n for n in imports if n.module == "__future__"]


def test_scalar_arguments_cover_the_kernel_in_order():
    tree = ast.parse(SOURCE.read_text())
    scalar_fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_scalar_args")
    keys = [
        k.value
        for node in ast.walk(scalar_fn)
        if isinstance(node, ast.Dict)
        for k in node.keys
        if isinstance(k, ast.Constant)
    ]
    assert set(keys) == set(SCALAR_ARGS)


def test_exporter_writes_nodes_the_registration_accepts(tmp_path):
    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = ModulatedDeformConv2d(16, 8, kernel_size=3, stride=2, padding=1)

        def forward(self, x, offset, mask):
            return self.conv(x, offset, mask)

    args = (torch.randn(1, 16, 8, 8), torch.randn(1, 18, 4, 4), torch.rand(1, 9, 4, 4))
    path = tmp_path / "mdcn.onnx"
    with deform_conv_onnx_symbolic("plugin", 19), torch.no_grad():
        torch.onnx.export(Wrapper().eval(), args, str(path), dynamo=False, opset_version=19)
    (node,) = [n for n in onnx.load(str(path)).graph.node if n.op_type == MDCN_SCHEMA.name]
    assert node.domain == MDCN_SCHEMA.namespace
    assert len(node.input) == len(MDCN_SCHEMA.inputs)
    attrs = {a.name: a for a in node.attribute}
    assert onnx.helper.get_attribute_value(attrs.pop("plugin_namespace")) == b"dyhead"
    assert onnx.helper.get_attribute_value(attrs.pop("plugin_version")) == b"1"  # QDP plugins are version "1"
    kinds = {onnx.AttributeProto.INTS: "ints", onnx.AttributeProto.INT: "int"}
    assert {name: kinds[a.type] for name, a in attrs.items()} == {
        a.name: a.kind for a in MDCN_SCHEMA.attributes
    }
    assert list(onnx.helper.get_attribute_value(attrs["stride"])) == [2, 2]
    assert onnx.helper.get_attribute_value(attrs["deformable_groups"]) == 1


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("tensorrt") is not None, reason="TensorRT is installed here"
)
def test_importing_the_trt_plugin_without_tensorrt_says_what_is_missing():
    code = "import dyhead_serve.plugins.trt_plugin"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "TensorRT >= 10.9" in result.stderr


def test_import_plugins_needs_neither_triton_nor_tensorrt():
    code = (
        "import sys, dyhead_serve.plugins, dyhead_serve.plugins.schema; "
        "assert 'triton' not in sys.modules and 'tensorrt' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
