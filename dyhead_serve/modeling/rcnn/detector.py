"""Two-stage detector (Faster R-CNN): backbone, region proposals, per-proposal box head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dyhead_serve.decode.rcnn import RCNNDecoder
from dyhead_serve.modeling.backbone.base import Backbone
from dyhead_serve.modeling.rcnn.roi_heads import StandardROIHeads
from dyhead_serve.modeling.rcnn.rpn import RPN

__all__ = ["GeneralizedRCNN"]


class GeneralizedRCNN(nn.Module):
    """``backbone`` (here the FPN + DyHead tower), ``proposal_generator`` (RPN), ``roi_heads``.

    ``forward`` maps a normalised, padded batch to fixed-shape raw outputs, P proposal slots per
    image (``RPN.POST_NMS_TOPK_TEST``); turning them into detections (softmax, per-class boxes,
    NMS) is :attr:`decoder`'s job, outside the network, so that every runtime shares it.

    Training cannot reuse those outputs: the box head trains on proposals sampled against the
    ground truth (with the ground-truth boxes added), so :meth:`forward_train` runs the network
    in its training form and returns the losses; ``forward`` stays the same in every mode.
    A :class:`~dyhead_serve.modeling.detector_protocol.Detector`.

    Args:
        backbone: image -> named feature maps.
        proposal_generator: proposals from the levels named ``rpn_in_features``.
        roi_heads: class logits and box deltas from the levels named ``roi_in_features``.
        rpn_in_features: backbone outputs the RPN reads, finest first.
        roi_in_features: backbone outputs the ROI pooler reads, finest first.
        decoder: post-processing (Detectron2's rules).
    """

    def __init__(
        self,
        backbone: Backbone,
        proposal_generator: RPN,
        roi_heads: StandardROIHeads,
        rpn_in_features: Sequence[str],
        roi_in_features: Sequence[str],
        decoder: RCNNDecoder,
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
        self.decoder = decoder

    # forward loops over images in Python; an ONNX trace records one image (see export/).
    traces_dynamic_batch = False

    @property
    def size_divisibility(self) -> int:
        return self.backbone.size_divisibility

    @property
    def num_classes(self) -> int:
        return self.decoder.num_classes

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

    def forward_train(
        self,
        images: Tensor,
        image_sizes: Tensor,
        gt_boxes: Sequence[Tensor],
        gt_classes: Sequence[Tensor],
    ) -> dict[str, Tensor]:
        """Training losses of a batch, as Detectron2's ``GeneralizedRCNN`` computes them in
        training mode (anchor and proposal minibatches drawn from torch's global generator).

        Args:
            images: Tensor[N, 3, H, W], normalised and padded to :attr:`size_divisibility`.
            image_sizes: Tensor[N, 2] int64, (h, w) of each image before padding.
            gt_boxes: per image Tensor[K_i, 4] (x0, y0, x1, y1) in input pixels.
            gt_classes: per image Tensor[K_i] int64 class indices in [0, num_classes).

        Returns:
            ``loss_cls``, ``loss_box_reg`` (box head), ``loss_rpn_cls``, ``loss_rpn_loc``:
            scalar tensors.

        Raises:
            ValueError: the ground truth does not match the batch.
            RuntimeError: the model was built without training losses.
            FloatingPointError: the RPN's predictions are not finite.
        """
        num_images = images.shape[0]
        if image_sizes.shape != (num_images, 2):
            raise ValueError(
                f"image_sizes must be Tensor[N, 2] (h, w) for {num_images} images, "
                f"got shape {tuple(image_sizes.shape)}"
            )
        if len(gt_boxes) != num_images or len(gt_classes) != num_images:
            raise ValueError(
                f"got ground truth for {len(gt_boxes)} / {len(gt_classes)} images, the batch has {num_images}"
            )
        device = images.device
        gt_boxes = [boxes.to(device=device, dtype=torch.float32) for boxes in gt_boxes]
        gt_classes = [classes.to(device=device, dtype=torch.int64) for classes in gt_classes]
        features = self.backbone(images)
        proposals, rpn_losses = self.proposal_generator.forward_train(
            [features[f] for f in self.rpn_in_features], image_sizes, gt_boxes
        )
        roi_losses = self.roi_heads.forward_train(
            [features[f] for f in self.roi_in_features], proposals, gt_boxes, gt_classes
        )
        return {**roi_losses, **rpn_losses}

    def loss_state_dict(self) -> None:
        """None: the RPN and box-head losses keep nothing between iterations."""
        return None

    def load_loss_state_dict(self, state: dict[str, float]) -> None:
        """Nothing to restore (see :meth:`loss_state_dict`)."""
