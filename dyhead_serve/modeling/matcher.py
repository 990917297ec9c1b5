"""Detectron2's ``Matcher``: each prediction (anchor) gets at most one ground-truth box and a
label from IoU thresholds, optionally with low-quality matches (RetinaNet, RPN)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["Matcher"]


class Matcher:
    """Stratify anchors by their best IoU with any ground-truth box.

    With ``thresholds = [0.4, 0.5]`` and ``labels = [0, -1, 1]`` (RetinaNet's defaults), an
    anchor whose best IoU is below 0.4 is negative (0), in [0.4, 0.5) ignored (-1), at least
    0.5 positive (1).

    Args:
        thresholds: increasing IoU boundaries, the first one positive.
        labels: one more label than thresholds, each -1 (ignore), 0 (negative) or 1 (positive).
        allow_low_quality_matches: also make positive, for every ground-truth box, the anchors
            with the highest IoU with it (ties included), even below the positive threshold.
            Those anchors keep their own best box as match.
    """

    def __init__(
        self, thresholds: Sequence[float], labels: Sequence[int], allow_low_quality_matches: bool = False
    ) -> None:
        thresholds = [float(t) for t in thresholds]
        if not thresholds or thresholds[0] <= 0:
            raise ValueError(f"IOU_THRESHOLDS must start with a positive value, got {thresholds}")
        if any(low > high for low, high in itertools.pairwise(thresholds)):
            raise ValueError(f"IOU_THRESHOLDS must be non-decreasing, got {thresholds}")
        if any(label not in (-1, 0, 1) for label in labels):
            raise ValueError(f"IOU_LABELS must each be -1, 0 or 1, got {list(labels)}")
        if len(labels) != len(thresholds) + 1:
            raise ValueError(
                f"IOU_LABELS needs one more entry than IOU_THRESHOLDS, got {list(labels)} for {thresholds}"
            )
        self.thresholds = [-float("inf"), *thresholds, float("inf")]
        self.labels = [int(label) for label in labels]
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix: Tensor) -> tuple[Tensor, Tensor]:
        """Match ground truth (rows) to predictions (columns).

        Args:
            match_quality_matrix: Tensor[M, N] pairwise IoU, M ground-truth boxes, N anchors;
                every value >= 0.

        Returns:
            matches: Tensor[N] int64, the matched ground-truth index (0 when M == 0).
            match_labels: Tensor[N] int8, -1 / 0 / 1 as configured (``labels[0]`` when M == 0).
        """
        if match_quality_matrix.dim() != 2:
            raise ValueError(f"match_quality_matrix must be 2-D, got {tuple(match_quality_matrix.shape)}")
        num_predictions = match_quality_matrix.shape[1]
        if match_quality_matrix.numel() == 0:
            return (
                match_quality_matrix.new_full((num_predictions,), 0, dtype=torch.int64),
                match_quality_matrix.new_full((num_predictions,), self.labels[0], dtype=torch.int8),
            )
        if bool((match_quality_matrix < 0).any()):
            raise ValueError("match_quality_matrix must not contain negative values")

        matched_vals, matches = match_quality_matrix.max(dim=0)  # [N]
        match_labels = matches.new_full(matches.size(), 1, dtype=torch.int8)
        for label, low, high in zip(self.labels, self.thresholds[:-1], self.thresholds[1:], strict=True):
            in_range = (matched_vals >= low) & (matched_vals < high)
            match_labels[in_range] = label

        if self.allow_low_quality_matches:
            # For each box, the anchors that overlap it most (ties included) become positive.
            highest_quality_per_gt, _ = match_quality_matrix.max(dim=1)  # [M]
            _, best_anchors = torch.nonzero(
                match_quality_matrix == highest_quality_per_gt[:, None], as_tuple=True
            )
            match_labels[best_anchors] = 1
        return matches, match_labels
