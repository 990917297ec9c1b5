"""Dynamic batching: images from many requests, one backend call.

One worker thread owns the backend and runs it off the event loop. Waiting images are grouped
by their padded (H, W): DyHead's GroupNorm and global poolings see the zero padding, so only
images padded to the same size may share a batch without changing each other's detections
(and equal shapes stack without further padding). A group is run as soon as it holds
``max_batch_size`` images, or when its oldest image has waited ``max_delay_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["BatchResult", "BatcherClosedError", "DynamicBatcher", "QueueFullError"]

logger = logging.getLogger(__name__)

InferFn = Callable[[Tensor, Tensor], dict[str, Tensor]]
BatchObserver = Callable[[int, float], None]


class QueueFullError(RuntimeError):
    """The queue holds ``max_queue`` images already; the caller should retry later."""


class BatcherClosedError(RuntimeError):
    """The batcher is shutting down and takes no new images."""


@dataclass
class BatchResult:
    """One image's share of a backend call.

    Attributes:
        outputs: the raw outputs of this image, batch dimension kept (``Tensor[1, ...]``).
        batch_size: how many images shared the call.
        queue_s: seconds between submission and the start of the call.
        inference_s: seconds the backend call took.
    """

    outputs: dict[str, Tensor]
    batch_size: int
    queue_s: float
    inference_s: float


@dataclass
class _Item:
    images: Tensor  # [1, 3, H, W]
    image_size: tuple[int, int]
    future: Future[BatchResult]
    enqueued: float


class DynamicBatcher:
    """Groups submitted images into backend calls on one worker thread.

    Args:
        infer: the backend: (Tensor[N, 3, H, W], image sizes Tensor[N, 2]) -> raw outputs whose
            tensors all have the batch as their first dimension.
        max_batch_size: most images per call (1: no batching).
        max_delay_s: longest time the first image of a group waits for others.
        max_queue: most images waiting; :meth:`submit` raises :class:`QueueFullError` beyond it.
        on_batch: called on the worker thread after each call with (batch size, seconds).
    """

    def __init__(
        self,
        infer: InferFn,
        *,
        max_batch_size: int = 8,
        max_delay_s: float = 0.01,
        max_queue: int = 64,
        on_batch: BatchObserver | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_delay_s >= 0")
        self._infer = infer
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._groups: dict[tuple[int, int], deque[_Item]] = {}
        self._depth = 0
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="dyhead-inference", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Images waiting for a backend call."""
        return self._depth

    def submit(self, images: Tensor, image_size: tuple[int, int]) -> Future[BatchResult]:
        """Queue one preprocessed image (``Tensor[1, 3, H, W]``, (h, w) before padding).

        Raises:
            QueueFullError: ``max_queue`` images are waiting already.
            BatcherClosedError: :meth:`close` was called.
        """
        if images.dim() != 4 or images.shape[0] != 1:
            raise ValueError(f"submit one image as Tensor[1, 3, H, W], got {tuple(images.shape)}")
        future: Future[BatchResult] = Future()
        key = (int(images.shape[-2]), int(images.shape[-1]))
        with self._cond:
            if self._closed:
                raise BatcherClosedError("the server is shutting down")
            if self._depth >= self.max_queue:
                raise QueueFullError(f"{self._depth} images are waiting (the limit is {self.max_queue})")
            self._groups.setdefault(key, deque()).append(_Item(images, image_size, future, time.monotonic()))
            self._depth += 1
            self._cond.notify()
        return future

    def close(self, timeout: float | None = None) -> None:
        """Take no new images, finish the queued ones, and stop the worker thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("the inference thread did not finish within %s s", timeout)

    def _take_batch(self) -> list[_Item] | None:
        """Block until a group is due; pop up to ``max_batch_size`` of its images (None: closed)."""
        with self._cond:
            while True:
                groups = [(key, group) for key, group in self._groups.items() if group]
                if not groups:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                # A full group goes first; otherwise the one whose oldest image has waited longest,
                # once its delay is over (or at once while shutting down).
                full = [kg for kg in groups if len(kg[1]) >= self.max_batch_size]
                key, group = min(full or groups, key=lambda kg: kg[1][0].enqueued)
                wait = group[0].enqueued + self.max_delay_s - time.monotonic()
                if full or wait <= 0 or self._closed:
                    batch = [group.popleft() for _ in range(min(self.max_batch_size, len(group)))]
                    if not group:
                        del self._groups[key]
                    self._depth -= len(batch)
                    return batch
                self._cond.wait(wait)

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            # A request that timed out or went away cancelled its future: skip its image.
            live = [item for item in batch if item.future.set_running_or_notify_cancel()]
            if live:
                self._run_batch(live)

    def _run_batch(self, items: list[_Item]) -> None:
        images = torch.cat([item.images for item in items])  # [N, 3, H, W]
        image_sizes = torch.tensor([item.image_size for item in items], dtype=torch.int64)  # [N, 2]
        start = time.monotonic()
        try:
            outputs = self._infer(images, image_sizes)
        except Exception as exc:  # the requests get the error; the thread keeps serving
            logger.exception("inference failed for a batch of %d", len(items))
            for item in items:
                item.future.set_exception(exc)
            return
        seconds = time.monotonic() - start
        for index, item in enumerate(items):
            mine = {name: value[index : index + 1] for name, value in outputs.items()}
            item.future.set_result(BatchResult(mine, len(items), start - item.enqueued, seconds))
        if self._on_batch is not None:
            self._on_batch(len(items), seconds)
