"""Region proposal network in Detectron2's form (``StandardRPNHead`` and the proposal selection of
``find_top_rpn_proposals``), returning a fixed number of proposal slots per image at test time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from dyhead_serve.decode.anchors import AnchorGenerator
from dyhead_serve.decode.box_coding import BoxCoder
from dyhead_serve.modeling.heads.flatten import flatten_levels
from dyhead_serve.modeling.rcnn.rpn_loss import RPNLoss

__all__ = ["RPN", "StandardRPNHead", "clip_boxes", "select_proposals"]


class StandardRPNHead(nn.Module):
    """A shared 3x3 conv + ReLU, then 1x1 convs for objectness and anchor deltas, on every level.

    Args:
        in_channels: channels of every input level.
        num_anchors: anchors per location.
    """

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)
        self.objectness_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1, stride=1)
        self.anchor_deltas = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1, stride=1)
        for module in (self.conv, self.objectness_logits, self.anchor_deltas):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)  # type: ignore[arg-type]

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Levels finest first, Tensor[N, C, H_l, W_l] -> per level objectness Tensor[N, H_l*W_l*A]
        and deltas Tensor[N, H_l*W_l*A, 4], ordered (y, x, anchor) like the anchors."""
        logits, deltas = [], []
        for feature in features:
            hidden = F.relu(self.conv(feature))
            logits.append(flatten_levels([self.objectness_logits(hidden)], 1).squeeze(2))
            deltas.append(flatten_levels([self.anchor_deltas(hidden)], 4))
        return logits, deltas


def clip_boxes(boxes: Tensor, image_size: Tensor) -> Tensor:
    """Clamp Tensor[R, 4] boxes to ``[0, w] x [0, h]``; ``image_size`` is Tensor[2] (h, w)."""
    size = image_size.to(boxes.dtype)
    limits = torch.stack((size[1], size[0], size[1], size[0]))
    return torch.minimum(boxes.clamp(min=0), limits)


def select_proposals(
    boxes: Tensor,
    scores: Tensor,
    level_ids: Tensor,
    image_size: Tensor,
    nms_threshold: float,
    post_nms_topk: int,
    min_box_size: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """One image's proposals from its per-level top-k candidates (Detectron2's test-time rule).

    Drops non-finite candidates, clips to the image, drops boxes with a side ``<= min_box_size``,
    runs NMS within each level and keeps the ``post_nms_topk`` best over all levels.

    Args:
        boxes: Tensor[R, 4] decoded candidates.
        scores: Tensor[R] objectness logits.
        level_ids: Tensor[R] int64, the level of each candidate (NMS does not cross levels).
        image_size: Tensor[2] (h, w) of the image before padding.

    Returns:
        Tensor[K, 4] boxes and Tensor[K] logits, K <= post_nms_topk, best first.
    """
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
    boxes, scores, level_ids = boxes[finite], scores[finite], level_ids[finite]
    boxes = clip_boxes(boxes, image_size)
    nonempty = ((boxes[:, 2] - boxes[:, 0]) > min_box_size) & ((boxes[:, 3] - boxes[:, 1]) > min_box_size)
    boxes, scores, level_ids = boxes[nonempty], scores[nonempty], level_ids[nonempty]
    # Boxes are decoded in float32 (Detectron2's rule); logits of a float64 model (the export's
    # float64 reference) are float64, and NMS takes one dtype.
    keep = batched_nms(boxes, scores.to(boxes.dtype), level_ids, nms_threshold)[:post_nms_topk]
    return boxes[keep], scores[keep]


def _pad_rows(rows: Tensor, slots: int, row_shape: tuple[int, ...] = ()) -> Tensor:
    """Tensor[K, *row_shape] with K <= ``slots`` -> Tensor[slots, *row_shape]: ``rows``, then zeros.

    Padded by ``slots`` rows (a constant) and cut to ``slots``, not padded by ``slots - K``: in an
    exported graph a run-time padding amount is a data-dependent extent, which TensorRT's parser
    cannot plan for, while this result has the fixed shape ``[slots, *row_shape]`` (the final
    reshape to constants states it to ONNX shape inference).
    """
    padded = F.pad(rows, (0, 0) * len(row_shape) + (0, slots))[:slots]
    return padded.reshape(slots, *row_shape)


class RPN(nn.Module):
    """Objectness and deltas on every level, anchors decoded into proposals, proposals selected.

    ``forward`` is the test-time network (``pre_nms_topk`` / ``post_nms_topk``, fixed output
    slots); :meth:`forward_train` also computes ``loss`` and selects with the training top-k
    values, as Detectron2's ``RPN`` in training mode.

    Args:
        head: the per-level predictor.
        anchor_generator: anchors of every level (its strides are the input levels').
        box_coder: anchor -> proposal transform (``RPN.BBOX_REG_WEIGHTS``).
        pre_nms_topk: candidates kept per level before NMS.
        post_nms_topk: proposals kept per image after NMS; also the number of output slots.
        nms_threshold: IoU threshold of the per-level NMS.
        min_box_size: proposals with a side at or below it (input pixels) are dropped.
        loss: the training losses (``None``: the RPN cannot be trained).
        train_pre_nms_topk, train_post_nms_topk: ``RPN.PRE_NMS_TOPK_TRAIN`` and
            ``RPN.POST_NMS_TOPK_TRAIN`` (default: the test values).
    """

    def __init__(
        self,
        head: StandardRPNHead,
        anchor_generator: AnchorGenerator,
        box_coder: BoxCoder,
        pre_nms_topk: int,
        post_nms_topk: int,
        nms_threshold: float,
        min_box_size: float = 0.0,
        loss: RPNLoss | None = None,
        train_pre_nms_topk: int | None = None,
        train_post_nms_topk: int | None = None,
    ) -> None:
        super().__init__()
        train_pre_nms_topk = pre_nms_topk if train_pre_nms_topk is None else train_pre_nms_topk
        train_post_nms_topk = post_nms_topk if train_post_nms_topk is None else train_post_nms_topk
        if min(pre_nms_topk, post_nms_topk, train_pre_nms_topk, train_post_nms_topk) <= 0:
            raise ValueError(
                f"RPN top-k values must be positive, got {pre_nms_topk} and {post_nms_topk} (test), "
                f"{train_pre_nms_topk} and {train_post_nms_topk} (training)"
            )
        self.rpn_head = head
        self.anchor_generator = anchor_generator
        self.box_coder = box_coder
        self.pre_nms_topk = pre_nms_topk
        self.post_nms_topk = post_nms_topk
        self.nms_threshold = nms_threshold
        self.min_box_size = min_box_size
        self.loss = loss  # a plain attribute: it holds no tensors of the state dict
        self.train_pre_nms_topk = train_pre_nms_topk
        self.train_post_nms_topk = train_post_nms_topk

    def forward(self, features: Sequence[Tensor], image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Proposals of each image.

        Args:
            features: Tensor[N, C, H_l, W_l] per level, finest first.
            image_sizes: Tensor[N, 2] (h, w) of each image before padding.

        Returns:
            ``proposals`` Tensor[N, P, 4], ``objectness`` Tensor[N, P] (logits) and ``counts``
            Tensor[N] int64, with P = ``post_nms_topk``. Image i's proposals are the first
            ``counts[i]`` rows, best first; the rows after them are zeros.
        """
        logits, deltas = self.rpn_head(features)
        anchors = self._anchors(features)
        selected = self._select(logits, deltas, anchors, image_sizes, self.pre_nms_topk, self.post_nms_topk)

        proposals, objectness, counts = [], [], []
        for kept_boxes, kept_scores in selected:
            proposals.append(_pad_rows(kept_boxes, self.post_nms_topk, (4,)))
            objectness.append(_pad_rows(kept_scores, self.post_nms_topk))
            # A count computed from the data, not a Python int, so that it stays a graph value.
            counts.append(torch.ones_like(kept_scores, dtype=torch.int64).sum())
        return torch.stack(proposals), torch.stack(objectness), torch.stack(counts)

    def forward_train(
        self, features: Sequence[Tensor], image_sizes: Tensor, gt_boxes: Sequence[Tensor]
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Training losses and the proposals the ROI heads train on.

        The losses come first (they draw the anchor minibatch from torch's global generator, as
        in Detectron2); the proposals are selected with the training top-k values and carry no
        gradient (Detectron2 treats them as fixed).

        Args:
            features: Tensor[N, C, H_l, W_l] per level, finest first.
            image_sizes: Tensor[N, 2] (h, w) of each image before padding.
            gt_boxes: per image Tensor[K_i, 4] (x0, y0, x1, y1) in input pixels.

        Returns:
            Per image its proposals Tensor[P_i, 4] (P_i <= ``train_post_nms_topk``, best first),
            and ``loss_rpn_cls``, ``loss_rpn_loc``.

        Raises:
            RuntimeError: the RPN was built without a loss.
            FloatingPointError: a predicted box or objectness is not finite (training diverged).
        """
        if self.loss is None:
            raise RuntimeError("this RPN was built without training losses; build the model with build_model")
        logits, deltas = self.rpn_head(features)
        anchors = self._anchors(features)
        losses = self.loss(logits, deltas, anchors, gt_boxes, image_sizes)
        with torch.no_grad():
            selected = self._select(
                [x.detach() for x in logits],
                [x.detach() for x in deltas],
                anchors,
                image_sizes,
                self.train_pre_nms_topk,
                self.train_post_nms_topk,
                require_finite=True,
            )
        return [boxes for boxes, _ in selected], losses

    def _anchors(self, features: Sequence[Tensor]) -> list[Tensor]:
        return self.anchor_generator.grid_anchors(
            [(f.shape[-2], f.shape[-1]) for f in features], device=features[0].device
        )

    def _select(
        self,
        logits: Sequence[Tensor],
        deltas: Sequence[Tensor],
        anchors: Sequence[Tensor],
        image_sizes: Tensor,
        pre_nms_topk: int,
        post_nms_topk: int,
        require_finite: bool = False,
    ) -> list[tuple[Tensor, Tensor]]:
        """Per image, its selected proposals Tensor[K, 4] and logits Tensor[K], best first."""
        boxes, scores, level_ids = self._top_candidates(logits, deltas, anchors, pre_nms_topk)
        if require_finite and not (bool(torch.isfinite(boxes).all()) and bool(torch.isfinite(scores).all())):
            raise FloatingPointError("the RPN predicted non-finite boxes or scores: training has diverged")
        selected = []
        for i in range(boxes.shape[0]):
            selected.append(
                select_proposals(
                    boxes[i],
                    scores[i],
                    level_ids,
                    image_sizes[i],
                    self.nms_threshold,
                    post_nms_topk,
                    self.min_box_size,
                )
            )
        return selected

    def _top_candidates(
        self,
        logits: Sequence[Tensor],
        deltas: Sequence[Tensor],
        anchors: Sequence[Tensor],
        pre_nms_topk: int | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The ``pre_nms_topk`` (default: the test value) best anchors of each level, decoded.

        Returns:
            boxes Tensor[N, R, 4], logits Tensor[N, R] and level ids Tensor[R] int64, levels
            concatenated finest first, each in descending logit order.
        """
        boxes, scores, level_ids = [], [], []
        for level, (level_logits, level_deltas, level_anchors) in enumerate(
            zip(logits, deltas, anchors, strict=True)
        ):
            num_images, num_anchors = level_logits.shape
            limit = self.pre_nms_topk if pre_nms_topk is None else pre_nms_topk
            # A trace records sizes as tensors: clamp in the graph, so that an exported graph
            # keeps min(anchors, k) at every input size instead of the tracing size's choice.
            size: Any = num_anchors  # a Tensor while tracing, though typed int
            k: Any = torch.clamp(size, max=limit) if isinstance(size, Tensor) else min(num_anchors, limit)
            top_logits, top_index = level_logits.topk(k, dim=1)  # [N, k]
            top_deltas = torch.gather(level_deltas, 1, top_index[..., None].expand(-1, -1, 4))  # [N, k, 4]
            top_anchors = level_anchors[top_index.reshape(-1)]  # [N*k, 4]
            decoded = self.box_coder.apply_deltas(top_deltas.reshape(-1, 4), top_anchors)
            boxes.append(decoded.reshape(num_images, -1, 4))
            scores.append(top_logits)
            level_ids.append(torch.full_like(top_logits[0], level, dtype=torch.int64))
        return torch.cat(boxes, dim=1), torch.cat(scores, dim=1), torch.cat(level_ids)
