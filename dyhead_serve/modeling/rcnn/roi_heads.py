"""Detectron2's ``StandardROIHeads`` box branch: pool each proposal, run the fully connected box
head, predict class logits and per-class box deltas; in training, on a sampled minibatch of
proposals, with the losses."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dyhead_serve.modeling.rcnn.fast_rcnn_loss import FastRCNNLoss
from dyhead_serve.modeling.rcnn.pooler import ROIPooler
from dyhead_serve.modeling.rcnn.proposal_sampling import ProposalSampler

__all__ = ["FastRCNNConvFCHead", "FastRCNNOutputLayers", "StandardROIHeads"]


class FastRCNNConvFCHead(nn.Module):
    """Flatten, then ``num_fc`` fully connected layers (``fc1``, ``fc2``, ...) each followed by ReLU.

    (Detectron2's head may also start with 3x3 convs, ``ROI_BOX_HEAD.NUM_CONV``; no official
    DyHead model has them, so they are not built.)

    Args:
        in_features: channels * resolution**2 of a pooled box.
        num_fc: number of fully connected layers (at least 1).
        fc_dim: width of each.
    """

    def __init__(self, in_features: int, num_fc: int, fc_dim: int) -> None:
        super().__init__()
        if num_fc < 1:
            raise ValueError(f"ROI_BOX_HEAD.NUM_FC must be at least 1, got {num_fc}")
        self.flatten = nn.Flatten()
        self.fcs: list[nn.Linear] = []
        for k in range(num_fc):
            fc = nn.Linear(in_features if k == 0 else fc_dim, fc_dim)
            # Caffe2's XavierFill, as Detectron2 initialises them.
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)
            self.add_module(f"fc{k + 1}", fc)
            self.fcs.append(fc)
        self.output_size = fc_dim

    def forward(self, x: Tensor) -> Tensor:
        """Tensor[M, C, S, S] pooled boxes -> Tensor[M, fc_dim]."""
        x = self.flatten(x)
        for fc in self.fcs:
            x = F.relu(fc(x))
        return x


class FastRCNNOutputLayers(nn.Module):
    """Linear classifier over ``num_classes + 1`` classes (background last) and linear box deltas.

    Args:
        in_features: width of the box head's output.
        num_classes: foreground classes.
        class_agnostic: one set of 4 deltas per box instead of one per class.
    """

    def __init__(self, in_features: int, num_classes: int, class_agnostic: bool = False) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, 4 * (1 if class_agnostic else num_classes))
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Tensor[M, D] -> logits Tensor[M, num_classes + 1], deltas Tensor[M, 4 * num_classes]
        (or Tensor[M, 4] when class agnostic)."""
        return self.cls_score(x), self.bbox_pred(x)


class StandardROIHeads(nn.Module):
    """Pooler, box head and box predictor (module names as in Detectron2's checkpoints).

    ``forward`` predicts given proposal slots (inference); :meth:`forward_train` samples the
    proposals against the ground truth first and returns the losses.

    Args:
        box_pooler: pools each proposal from the pyramid.
        box_head: pooled features -> box embedding.
        box_predictor: box embedding -> class logits and box deltas.
        proposal_sampler: training minibatch of proposals (``None``: cannot be trained).
        loss: training losses of the box predictor (``None``: cannot be trained).
    """

    def __init__(
        self,
        box_pooler: ROIPooler,
        box_head: FastRCNNConvFCHead,
        box_predictor: FastRCNNOutputLayers,
        proposal_sampler: ProposalSampler | None = None,
        loss: FastRCNNLoss | None = None,
    ) -> None:
        super().__init__()
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.box_predictor = box_predictor
        # Plain attributes: they hold no tensors of the state dict.
        self.proposal_sampler = proposal_sampler
        self.loss = loss

    def forward(self, features: Sequence[Tensor], proposals: Tensor) -> tuple[Tensor, Tensor]:
        """Predict every proposal slot.

        Args:
            features: Tensor[N, C, H_l, W_l] per pooler level, finest first.
            proposals: Tensor[N, P, 4] (x0, y0, x1, y1) in input pixels.

        Returns:
            logits Tensor[N, P, K + 1] and deltas Tensor[N, P, 4K] (4 when class agnostic).
        """
        num_images, num_proposals = proposals.shape[:2]
        pooled = self.box_pooler(features, proposals)  # [N*P, C, S, S]
        logits, deltas = self.box_predictor(self.box_head(pooled))
        return logits.reshape(num_images, num_proposals, -1), deltas.reshape(num_images, num_proposals, -1)

    def forward_train(
        self,
        features: Sequence[Tensor],
        proposals: Sequence[Tensor],
        gt_boxes: Sequence[Tensor],
        gt_classes: Sequence[Tensor],
    ) -> dict[str, Tensor]:
        """Sample proposals (torch's global generator), predict them, return the losses.

        Args:
            features: Tensor[N, C, H_l, W_l] per pooler level, finest first.
            proposals: per image Tensor[P_i, 4] in input pixels (no gradient).
            gt_boxes: per image Tensor[K_i, 4].
            gt_classes: per image Tensor[K_i] int64 in [0, num_classes).

        Returns:
            ``loss_cls`` and ``loss_box_reg``, scalar tensors.

        Raises:
            RuntimeError: the heads were built without a proposal sampler and a loss.
        """
        if self.proposal_sampler is None or self.loss is None:
            raise RuntimeError(
                "these ROI heads were built without training losses; build the model with build_model"
            )
        sampled = self.proposal_sampler(proposals, gt_boxes, gt_classes)
        pooled = self.box_pooler.pool_boxes(features, [s.boxes for s in sampled])  # [S, C, R, R]
        logits, deltas = self.box_predictor(self.box_head(pooled))
        return self.loss(
            logits,
            deltas,
            torch.cat([s.boxes for s in sampled]),
            torch.cat([s.gt_classes for s in sampled]),
            torch.cat([s.gt_boxes for s in sampled]),
        )
