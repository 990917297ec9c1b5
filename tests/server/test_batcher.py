"""The dynamic batcher on its own, with a stand-in network that records each call."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from dyhead_serve.server.batcher import BatcherClosedError, DynamicBatcher, QueueFullError


class RecordingNetwork:
    """Returns each image's mean as its output; records batch shapes; can be held at a gate."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, images: torch.Tensor, image_sizes: torch.Tensor) -> dict[str, torch.Tensor]:
        self.entered.set()
        self.gate.wait(10)
        self.calls.append(tuple(images.shape))
        return {"mean": images.mean(dim=(1, 2, 3)), "sizes": image_sizes.clone()}


def image(value: float, height: int = 128, width: int = 256) -> torch.Tensor:
    return torch.full((1, 3, height, width), value)


def test_images_of_one_padded_size_share_a_call_and_get_their_own_outputs():
    net = RecordingNetwork()
    batcher = DynamicBatcher(net, max_batch_size=4, max_delay_s=0.2)
    try:
        images = [image(float(i)) for i in range(4)]
        futures = [batcher.submit(images[i], (100 + i, 200)) for i in range(4)]
        results = [f.result(5) for f in futures]
    finally:
        batcher.close()
    assert net.calls == [(4, 3, 128, 256)]
    for i, result in enumerate(results):
        assert result.batch_size == 4
        assert result.outputs["mean"].tolist() == [float(i)]
        assert result.outputs["sizes"].tolist() == [[100 + i, 200]]


def test_different_padded_sizes_never_share_a_call():
    net = RecordingNetwork()
    batcher = DynamicBatcher(net, max_batch_size=8, max_delay_s=0.05)
    try:
        images = [image(1.0, 128, 256 if i % 2 else 128) for i in range(6)]  # made first: torch.full is slow
        futures = [batcher.submit(images[i], (128, 128)) for i in range(6)]
        for f in futures:
            f.result(5)
    finally:
        batcher.close()
    assert sorted(net.calls) == [(3, 3, 128, 128), (3, 3, 128, 256)]


def test_max_batch_size_splits_a_burst():
    net = RecordingNetwork()
    net.gate.clear()
    batcher = DynamicBatcher(net, max_batch_size=3, max_delay_s=0.0)
    try:
        ones = image(1.0)
        first = batcher.submit(image(0.0), (128, 256))
        assert net.entered.wait(5)  # the worker is busy with the first image ...
        rest = [batcher.submit(ones, (128, 256)) for _ in range(7)]  # ... while 7 more queue
        net.gate.set()
        for f in [first, *rest]:
            f.result(5)
    finally:
        batcher.close()
    assert [c[0] for c in net.calls] == [1, 3, 3, 1]


def test_a_lone_image_waits_at_most_the_delay():
    net = RecordingNetwork()
    batcher = DynamicBatcher(net, max_batch_size=8, max_delay_s=0.05)
    try:
        start = time.monotonic()
        result = batcher.submit(image(0.0), (128, 256)).result(5)
    finally:
        batcher.close()
    assert result.batch_size == 1
    assert time.monotonic() - start < 2.0  # bounded by the delay, not by a full batch
    assert result.queue_s >= 0.04


def test_queue_full_refuses_instead_of_growing():
    net = RecordingNetwork()
    net.gate.clear()
    batcher = DynamicBatcher(net, max_batch_size=1, max_delay_s=0.0, max_queue=2)
    try:
        running = batcher.submit(image(0.0), (128, 256))
        assert net.entered.wait(5)
        queued = [batcher.submit(image(1.0), (128, 256)) for _ in range(2)]
        with pytest.raises(QueueFullError):
            batcher.submit(image(2.0), (128, 256))
        assert batcher.depth == 2
        net.gate.set()
        for f in [running, *queued]:
            f.result(5)
    finally:
        batcher.close()


def test_close_finishes_queued_work_then_refuses():
    net = RecordingNetwork()
    net.gate.clear()
    batcher = DynamicBatcher(net, max_batch_size=2, max_delay_s=10.0)
    futures = [batcher.submit(image(float(i)), (128, 256)) for i in range(3)]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    net.gate.set()
    closer.join(10)
    assert all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(BatcherClosedError):
        batcher.submit(image(0.0), (128, 256))


def test_cancelled_images_are_skipped_and_errors_reach_the_callers():
    net = RecordingNetwork()
    net.gate.clear()
    batcher = DynamicBatcher(net, max_batch_size=4, max_delay_s=0.0)
    try:
        first = batcher.submit(image(0.0), (128, 256))
        assert net.entered.wait(5)
        abandoned = batcher.submit(image(1.0), (128, 256))
        kept = batcher.submit(image(2.0), (128, 256))
        assert abandoned.cancel()
        net.gate.set()
        assert kept.result(5).batch_size == 1
        first.result(5)
    finally:
        batcher.close()

    def failing(images: torch.Tensor, image_sizes: torch.Tensor) -> dict[str, torch.Tensor]:
        raise RuntimeError("out of memory")

    broken = DynamicBatcher(failing, max_batch_size=2, max_delay_s=0.0)
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            broken.submit(image(0.0), (128, 256)).result(5)
        with pytest.raises(RuntimeError, match="out of memory"):  # the worker thread still serves
            broken.submit(image(0.0), (128, 256)).result(5)
    finally:
        broken.close()
