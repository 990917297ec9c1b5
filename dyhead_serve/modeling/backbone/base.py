"""The interface every feature extractor implements."""

from __future__ import annotations

from torch import Tensor, nn

from dyhead_serve.modeling.shape_spec import ShapeSpec


class Backbone(nn.Module):
    """A network that maps an image batch to named feature maps.

    ``forward(images: Tensor[N, 3, H, W]) -> dict[str, Tensor]`` returns one map per name in
    :meth:`output_shape`, in that order, each of shape ``[N, channels, H / stride, W / stride]``.
    """

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride of each output, in output order."""
        raise NotImplementedError

    @property
    def size_divisibility(self) -> int:
        """Input height and width must be multiples of this (0: any size)."""
        return 0

    def forward(self, images: Tensor) -> dict[str, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError
