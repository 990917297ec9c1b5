"""The declared interface of our TensorRT plugin for modulated deformable convolution.

One source of truth for the op type, namespace, version, inputs and attributes: the ONNX
exporter (``export/``) writes nodes from it and the TensorRT plugin registration (Quick
Deployable Plugin) declares the same names. Plain data, importable without TensorRT or Triton.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MDCN_SCHEMA", "PluginAttribute", "PluginSchema"]


@dataclass(frozen=True)
class PluginAttribute:
    """One attribute of the plugin node: its name, ONNX attribute kind and length (0: scalar)."""

    name: str
    kind: str  # "ints" | "int" | "string"
    length: int = 0


@dataclass(frozen=True)
class PluginSchema:
    """What a node calling the plugin looks like in ONNX."""

    namespace: str
    name: str
    version: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: tuple[PluginAttribute, ...]

    @property
    def qualified_name(self) -> str:
        """``namespace::name``, the key TensorRT's plugin registry uses."""
        return f"{self.namespace}::{self.name}"


MDCN_SCHEMA = PluginSchema(
    namespace="dyhead",
    name="ModulatedDeformConv2d",
    version="1",
    # input [N, Cin, H, W]; offset [N, 2*G*kh*kw, Ho, Wo] as (dy, dx) pairs; mask [N, G*kh*kw, Ho, Wo]
    # after the sigmoid; weight [Cout, Cin/groups, kh, kw]; bias [Cout]
    inputs=("input", "offset", "mask", "weight", "bias"),
    outputs=("output",),
    attributes=(
        PluginAttribute("stride", "ints", 2),
        PluginAttribute("padding", "ints", 2),
        PluginAttribute("dilation", "ints", 2),
        PluginAttribute("groups", "int"),
        PluginAttribute("deformable_groups", "int"),
    ),
)
