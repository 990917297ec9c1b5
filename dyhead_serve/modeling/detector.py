"""One-stage dense detectors (ATSS, RetinaNet): backbone + head, tensor in, tensors out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dyhead_serve.decode.detectron2_dense import Detectron2DenseDecoder
from dyhead_serve.decode.mmdet_atss import MMDetATSSDecoder
from dyhead_serve.modeling.backbone.base import Backbone
from dyhead_serve.modeling.losses.dense_loss import DenseLoss

__all__ = ["DenseDetector"]


class DenseDetector(nn.Module):
    """``backbone`` (here the FPN + DyHead tower) followed by a dense ``head``.

    ``forward`` maps a normalised, padded batch Tensor[N, 3, H, W] (H and W multiples of
    :attr:`size_divisibility`) to the head's raw outputs (``logits``, ``deltas`` and, for ATSS,
    ``centerness``; see the heads). Decoding them into boxes is :attr:`decoder`'s job, outside the
    network, so that every runtime shares it.

    Training computes the losses from the same outputs with :meth:`losses` (``loss``, the
    :class:`DenseLoss` given at construction), also outside ``forward``, so that ``forward``
    stays the tensor-in, tensor-out network in training and inference alike;
    :meth:`forward_train` runs both. A :class:`~dyhead_serve.modeling.detector_protocol.Detector`.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: Sequence[str],
        decoder: Detectron2DenseDecoder | MMDetATSSDecoder,
        loss: DenseLoss | None = None,
    ) -> None:
        super().__init__()
        shapes = backbone.output_shape()
        missing = [f for f in head_in_features if f not in shapes]
        if missing:
            raise ValueError(f"head input(s) {missing} are not backbone outputs {list(shapes)}")
        self.backbone = backbone
        self.head = head
        self.head_in_features = list(head_in_features)
        self.decoder = decoder
        self.loss = loss  # a plain attribute: it holds no tensors of the state dict

    @property
    def size_divisibility(self) -> int:
        return self.backbone.size_divisibility

    @property
    def num_classes(self) -> int:
        return self.decoder.num_classes

    def forward(self, images: Tensor, image_sizes: Tensor | None = None) -> dict[str, Tensor]:
        """``image_sizes`` (Tensor[N, 2], (h, w) before padding) is accepted for a uniform
        interface with two-stage detectors; dense detectors do not need it."""
        features = self.backbone(images)
        return self.head([features[f] for f in self.head_in_features])

    def forward_train(
        self,
        images: Tensor,
        image_sizes: Tensor,
        gt_boxes: Sequence[Tensor],
        gt_classes: Sequence[Tensor],
    ) -> dict[str, Tensor]:
        """Training losses of a batch: :meth:`forward`, then :meth:`losses` on its outputs.

        The losses run outside autocast (in float32, see :meth:`losses`) even when the network
        runs under it.

        Args:
            images: Tensor[N, 3, H, W], normalised and padded to :attr:`size_divisibility`.
            image_sizes: Tensor[N, 2] int64, (h, w) of each image before padding.
            gt_boxes, gt_classes: as for :meth:`losses`.
        """
        outputs = self(images, image_sizes)
        with torch.autocast(images.device.type, enabled=False):
            return self.losses(outputs, gt_boxes, gt_classes, (int(images.shape[-2]), int(images.shape[-1])))

    def loss_state_dict(self) -> dict[str, float] | None:
        """The loss's state between iterations (None when built without a loss)."""
        return None if self.loss is None else self.loss.state_dict()

    def load_loss_state_dict(self, state: dict[str, float]) -> None:
        """Restore what :meth:`loss_state_dict` returned."""
        if self.loss is not None:
            self.loss.load_state_dict(state)

    def losses(
        self,
        outputs: dict[str, Tensor],
        gt_boxes: Sequence[Tensor],
        gt_classes: Sequence[Tensor],
        padded_hw: tuple[int, int],
    ) -> dict[str, Tensor]:
        """Training losses of a batch, named as Detectron2 logs them.

        Args:
            outputs: what :meth:`forward` returned for the batch (Tensor[N, R, ...] each).
            gt_boxes: per image, Tensor[K_i, 4] boxes (x0, y0, x1, y1) in input pixels (the
                resized, unpadded image's coordinates).
            gt_classes: per image, Tensor[K_i] int64 class indices in [0, num_classes).
            padded_hw: (H, W) of the padded input batch.

        Returns:
            ATSS: ``loss_cls``, ``loss_box_reg``, ``loss_ctr``; RetinaNet: ``loss_cls``,
            ``loss_box_reg``. Scalar float32 tensors.

        Raises:
            RuntimeError: the detector was built without a loss.
            ValueError: the outputs do not match ``padded_hw`` or the number of images.
        """
        if self.loss is None:
            raise RuntimeError("this detector was built without training losses; build it with build_model")
        num_images = outputs["logits"].shape[0]
        if len(gt_boxes) != num_images or len(gt_classes) != num_images:
            raise ValueError(
                f"got ground truth for {len(gt_boxes)} / {len(gt_classes)} images, outputs for {num_images}"
            )
        device = outputs["logits"].device
        grid = self.decoder.anchor_generator.grid_sizes(padded_hw)
        anchors = self.decoder.anchor_generator.grid_anchors(grid, device=device)
        if sum(len(a) for a in anchors) != outputs["logits"].shape[1]:
            raise ValueError(
                f"the outputs hold {outputs['logits'].shape[1]} anchors, a {padded_hw} input has "
                f"{sum(len(a) for a in anchors)}; is padded_hw the size of the network input?"
            )
        return self.loss(
            {name: value.float() for name, value in outputs.items()},
            anchors,
            [boxes.to(device) for boxes in gt_boxes],
            [classes.to(device) for classes in gt_classes],
        )
