"""The contract every detector meets: what the runtime, evaluation and training use of one.

:class:`~dyhead_serve.modeling.detector.DenseDetector` (ATSS and RetinaNet, Detectron2 and
mmdetection layouts) and :class:`~dyhead_serve.modeling.rcnn.GeneralizedRCNN` (Faster R-CNN)
meet it; :func:`~dyhead_serve.modeling.build.build_model` returns one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from torch import Tensor

from dyhead_serve.decode.base import Decoder

__all__ = ["Detector"]


class Detector(Protocol):
    """A detector network with its decoder.

    Every implementation is also a :class:`torch.nn.Module` (parameters, ``state_dict``,
    ``train``/``eval``, ``to``); code that needs those checks ``isinstance(model, nn.Module)``.

    ``forward`` is the tensor-in, tensor-out network of inference and export, the same in every
    mode; :meth:`forward_train` computes the training losses of a batch. Decoding the raw outputs
    into detections is :attr:`decoder`'s job, outside the network, so that every runtime shares it.
    """

    @property
    def size_divisibility(self) -> int:
        """Input height and width must be multiples of this (0 or 1: any size)."""
        ...

    @property
    def num_classes(self) -> int:
        """Foreground classes; class indices run over ``[0, num_classes)``."""
        ...

    @property
    def decoder(self) -> Decoder:
        """Turns :meth:`forward`'s raw outputs into detections (see the pipeline's ``Decoder``)."""
        ...

    def forward(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        """Raw outputs of a batch.

        Args:
            images: Tensor[N, 3, H, W], normalised and padded to :attr:`size_divisibility`.
            image_sizes: Tensor[N, 2] int64, (h, w) of each image before padding.

        Returns:
            The named raw outputs the :attr:`decoder` reads (dense: ``logits``, ``deltas`` and,
            for ATSS, ``centerness``; Faster R-CNN: ``proposals``, ``num_proposals``, ``logits``,
            ``deltas``).
        """
        ...

    def __call__(self, images: Tensor, image_sizes: Tensor) -> dict[str, Tensor]:
        """:meth:`forward` through ``nn.Module``'s hooks."""
        ...

    def forward_train(
        self,
        images: Tensor,
        image_sizes: Tensor,
        gt_boxes: Sequence[Tensor],
        gt_classes: Sequence[Tensor],
    ) -> dict[str, Tensor]:
        """Training losses of a batch, named as Detectron2 logs them.

        Args:
            images, image_sizes: as for :meth:`forward`.
            gt_boxes: per image Tensor[K_i, 4] (x0, y0, x1, y1) in input pixels (the resized,
                unpadded image's coordinates).
            gt_classes: per image Tensor[K_i] int64 class indices in ``[0, num_classes)``.

        Returns:
            Scalar loss tensors (e.g. ``loss_cls``, ``loss_box_reg``); their sum is trained.
        """
        ...

    def loss_state_dict(self) -> dict[str, float] | None:
        """What the training losses keep between iterations (e.g. a moving-average normaliser),
        for a training checkpoint; None: the checkpoint gets no entry for them."""
        ...

    def load_loss_state_dict(self, state: dict[str, float]) -> None:
        """Restore what :meth:`loss_state_dict` returned."""
        ...
