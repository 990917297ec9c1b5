"""One-stage dense detectors (ATSS, RetinaNet): backbone + head, tensor in, tensors out."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from dyhead_serve.modeling.backbone.base import Backbone
from dyhead_serve.modeling.dense_decoder import DenseDecoder, DenseDecoderSpec

__all__ = ["DenseDetector"]


class DenseDetector(nn.Module):
    """``backbone`` (here the FPN + DyHead tower) followed by a dense ``head``.

    ``forward`` maps a normalised, padded batch Tensor[N, 3, H, W] (H and W multiples of
    :attr:`size_divisibility`) to the head's raw outputs (``logits``, ``deltas`` and, for ATSS,
    ``centerness``; see the heads). Decoding them into boxes is :attr:`decoder`'s job, outside the
    network, so that every runtime shares it.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: Sequence[str],
        decoder_spec: DenseDecoderSpec,
    ) -> None:
        super().__init__()
        shapes = backbone.output_shape()
        missing = [f for f in head_in_features if f not in shapes]
        if missing:
            raise ValueError(f"head input(s) {missing} are not backbone outputs {list(shapes)}")
        self.backbone = backbone
        self.head = head
        self.head_in_features = list(head_in_features)
        self.decoder_spec = decoder_spec
        self.decoder = DenseDecoder(decoder_spec)

    @property
    def size_divisibility(self) -> int:
        return self.backbone.size_divisibility

    @property
    def num_classes(self) -> int:
        return self.decoder_spec.num_classes

    def forward(self, images: Tensor, image_sizes: Tensor | None = None) -> dict[str, Tensor]:
        """``image_sizes`` (Tensor[N, 2], (h, w) before padding) is accepted for a uniform
        interface with two-stage detectors; dense detectors do not need it."""
        features = self.backbone(images)
        return self.head([features[f] for f in self.head_in_features])
