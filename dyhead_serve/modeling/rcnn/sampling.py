"""Random subsampling of labelled anchors or proposals into a fixed-size training minibatch, as
Detectron2's ``subsample_labels``."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["subsample_labels"]


def subsample_labels(
    labels: Tensor, num_samples: int, positive_fraction: float, bg_label: int
) -> tuple[Tensor, Tensor]:
    """Pick at most ``num_samples`` labelled elements, at most ``positive_fraction`` of them positive.

    ``int(num_samples * positive_fraction)`` positives are drawn (all of them if there are fewer);
    the remaining slots go to negatives (all of them if there are fewer). The draw uses
    ``torch.randperm`` with the global generator, positives first, exactly as Detectron2 does, so
    that seeding both the same way draws the same elements.

    Args:
        labels: Tensor[R] with -1 (ignore), ``bg_label`` (negative) or any other value (positive).
        num_samples: size of the minibatch.
        positive_fraction: upper bound on the share of positives.
        bg_label: the value that marks a negative.

    Returns:
        Indices into ``labels`` of the sampled positives Tensor[P] and negatives Tensor[Q] (int64,
        in random order), P + Q <= num_samples.
    """
    positive = torch.nonzero((labels != -1) & (labels != bg_label)).squeeze(1)
    negative = torch.nonzero(labels == bg_label).squeeze(1)

    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)

    pos_perm = torch.randperm(positive.numel(), device=positive.device)[:num_pos]
    neg_perm = torch.randperm(negative.numel(), device=negative.device)[:num_neg]
    return positive[pos_perm], negative[neg_perm]
