"""Two-stage detector (Faster R-CNN): backbone, region proposals, per-proposal box head."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from dyhead_serve.modeling.backbone.base import Backbone
from dyhead_serve.modeling.rcnn.decoder import RCNNDecoder, RCNNDecoderSpec
from dyhead_serve.modeling.rcnn.roi_heads import StandardROIHeads
from dyhead_serve.modeling.rcnn.rpn import RPN

__all__ = ["GeneralizedRCNN"]


class GeneralizedRCNN(nn.Module):
    """``backbone`` (here the FPN + DyHead tower), ``proposal_generator`` (RPN), ``roi_heads``.

    ``forward`` maps a normalised, padded batch to fixed-shape raw outputs, P proposal slots per
    image (``RPN.POST_NMS_TOPK_TEST``); turning them into detections (softmax, per-class boxes,
    NMS) is :attr:`decoder`'s job, outside the network, so that every runtime shares it.

    Args:
        backbone: image -> named feature maps.
        proposal_generator: proposals from the levels named ``rpn_in_features``.
        roi_heads: class logits and box deltas from the levels named ``roi_in_features``.
        rpn_in_features: backbone outputs the RPN reads, finest first.
        roi_in_features: backbone outputs the ROI pooler reads, finest first.
        decoder_spec: post-processing settings.
    """

    def __init__(
        self,
        backbone: Backbone,
        proposal_generator: RPN,
        roi_heads: StandardROIHeads,
        rpn_in_features: Sequence[str],
        roi_in_features: Sequence[str],
        decoder_spec: RCNNDecoderSpec,
    ) -> None:
        super().__init__()
        shapes = backbone.output_shape()
        missing = [f for f in [*rpn_in_features, *roi_in_features] if f not in shapes]
        if missing:
            raise ValueError(f"RPN/ROI input(s) {missing} are not backbone outputs {list(shapes)}")
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.roi_heads = roi_heads
        self.rpn_in_features = list(rpn_in_features)
        self.roi_in_features = list(roi_in_features)
        self.decoder_spec = decoder_spec
        self.decoder = RCNNDecoder(decoder_spec)

    @property
    def size_divisibility(self) -> int:
        return self.backbone.size_divisibility

    @property
    def num_classes(self) -> int:
        return self.decoder_spec.num_classes

    def forward(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        """Run the network.

        Args:
            images: Tensor[N, 3, H, W], normalised and padded to :attr:`size_divisibility`.
            image_sizes: Tensor[N, 2] int64, (h, w) of each image before padding; proposals are
                clipped to it.

        Returns:
            ``proposals`` Tensor[N, P, 4] (x0, y0, x1, y1, input pixels, best first),
            ``num_proposals`` Tensor[N] int64 (slots of image i past ``num_proposals[i]`` are
            padding: zero boxes whose logits and deltas are meaningless), ``logits``
            Tensor[N, P, K + 1] (background last) and ``deltas`` Tensor[N, P, 4K].
        """
        if image_sizes.shape != (images.shape[0], 2):
            raise ValueError(
                f"image_sizes must be Tensor[N, 2] (h, w) for {images.shape[0]} images, "
                f"got shape {tuple(image_sizes.shape)}"
            )
        features = self.backbone(images)
        proposals, _, num_proposals = self.proposal_generator(
            [features[f] for f in self.rpn_in_features], image_sizes
        )
        logits, deltas = self.roi_heads([features[f] for f in self.roi_in_features], proposals)
        return {"proposals": proposals, "num_proposals": num_proposals, "logits": logits, "deltas": deltas}
