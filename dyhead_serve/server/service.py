"""The detection service behind the routes: loads the model, warms it up, admits requests and
runs them through decode -> preprocess -> batcher -> decode boxes -> original pixels.

It runs the same two pipeline steps as ``dyhead-serve predict`` and ``eval``
(:func:`~dyhead_serve.pipeline.predictor.prepare_image` before the network,
:func:`~dyhead_serve.pipeline.predictor.detections_from_outputs` after it), each image
preprocessed on its own, so a request gets the same detections as predict.
Decoding and preprocessing run on a small thread pool that serves requests in turn (a request of
many large images cannot hold back the others), inference on the batcher's thread: the event loop
only moves bytes. Before anything is decoded, the image headers are read to enforce the
per-request pixel budget (``max_request_pixels``).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import torch

from dyhead_serve.pipeline.image_io import ImageDecodeError, ImageTooLargeError, decode_image, image_size
from dyhead_serve.pipeline.postprocess import Detections
from dyhead_serve.pipeline.predictor import UnsupportedImageSizeError, detections_from_outputs, prepare_image
from dyhead_serve.pipeline.preprocess import Batch
from dyhead_serve.runtime.base import Backend
from dyhead_serve.server.batcher import BatcherClosedError, BatchResult, DynamicBatcher, QueueFullError
from dyhead_serve.server.errors import ApiError
from dyhead_serve.server.fair_pool import FairPool
from dyhead_serve.server.metrics import Metrics
from dyhead_serve.server.options import DetectOptions
from dyhead_serve.server.settings import ServerSettings
from dyhead_serve.server.uploads import EncodedImage

__all__ = ["DetectionService", "ImageResult", "ServiceState"]

logger = logging.getLogger(__name__)

BackendLoader = Callable[[ServerSettings], Backend]


class ServiceState(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPING = "stopping"


@dataclass
class _Prepared:
    name: str | None
    batch: Batch  # one image: images Tensor[1, 3, H, W]
    image: np.ndarray | None  # the decoded RGB image, kept only when it is drawn on afterwards
    seconds: float


@dataclass
class ImageResult:
    """The outcome for one image of a request."""

    name: str | None
    detections: Detections
    image: np.ndarray | None
    batch: BatchResult
    preprocess_s: float
    postprocess_s: float


def load_backend_from_settings(settings: ServerSettings) -> Backend:
    """The model the settings name, through the one runtime loader."""
    from dyhead_serve.runtime.loader import load_backend

    return load_backend(settings.model_options)


class DetectionService:
    """Owns the backend, the batcher and the preprocessing threads of one server process.

    Args:
        settings: the server's settings.
        metrics: where to count.
        load: returns the backend (default: the runtime loader on ``settings``); called on a
            background thread by :meth:`start`.
        on_load_failure: called with the exception when loading or warm-up fails.
    """

    def __init__(
        self,
        settings: ServerSettings,
        metrics: Metrics,
        load: BackendLoader = load_backend_from_settings,
        on_load_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._load = load
        self._on_load_failure = on_load_failure
        self.state = ServiceState.LOADING
        self.error: str | None = None
        self.backend: Backend | None = None
        self.batcher: DynamicBatcher | None = None
        self._pool = FairPool(settings.preprocess_workers, thread_name_prefix="dyhead-preprocess")
        self._lock = threading.Lock()
        self._in_flight = 0
        self._loader: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Load and warm up on a background thread; the state turns READY (or FAILED) after."""
        self._loader = threading.Thread(target=self._load_and_warm_up, name="dyhead-load", daemon=True)
        self._loader.start()

    def _load_and_warm_up(self) -> None:
        started = time.perf_counter()
        try:
            backend = self._load(self.settings)
            self.backend = backend
            self.batcher = DynamicBatcher(
                backend.infer,
                max_batch_size=self.settings.max_batch_size,
                max_delay_s=self.settings.max_batch_delay_ms / 1000.0,
                max_queue=self.settings.max_queue,
                on_batch=self.metrics.observe_batch,
            )
            self.metrics.track_queue_depth(lambda: self.batcher.depth if self.batcher else 0)
            if self.settings.warmup:
                self._warm_up()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}".strip()
            self.state = ServiceState.FAILED
            logger.error("cannot serve the model: %s", self.error)
            if self._on_load_failure is not None:
                self._on_load_failure(exc)
            return
        if self.state is ServiceState.LOADING:
            self.state = ServiceState.READY
            self.metrics.ready.set(1)
            logger.info(
                "ready: %s on %s (%s, %s) in %.1f s; batches of up to %d within %.0f ms",
                backend.model_name, backend.name, backend.device, backend.precision,
                time.perf_counter() - started, self.settings.max_batch_size, self.settings.max_batch_delay_ms,
            )  # fmt: skip

    def _warm_up(self) -> None:
        """One image of the model's usual input size through the whole pipeline."""
        from dyhead_serve.data.sample_image import synthetic_photo

        spec = self.require_backend().input_spec
        height = spec.min_size
        width = min(spec.max_size, round(spec.min_size * 4 / 3))
        prepared = self._prepare_array(synthetic_photo(height, width), None, keep_image=False, started=0.0)
        start = time.perf_counter()
        result = self._submit(prepared).result()
        self._finish([prepared], [result], DetectOptions())
        logger.info(
            "warm-up inference at %dx%d: %.0f ms", height, width, (time.perf_counter() - start) * 1000
        )

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new work, finish what is queued, stop the threads."""
        self.state = ServiceState.STOPPING
        self.metrics.ready.set(0)
        if self._loader is not None:
            self._loader.join(timeout)
        if self.batcher is not None:
            self.batcher.close(timeout)
        if not self._pool.shutdown(wait=True, timeout=timeout):
            logger.warning("image decoding still running after %s s at shutdown; abandoned", timeout)

    @property
    def ready(self) -> bool:
        return self.state is ServiceState.READY

    def require_backend(self) -> Backend:
        """The loaded backend (perhaps still warming up), or a 503."""
        if self.backend is None:
            raise ApiError(503, "not_ready", "the model is not loaded yet")
        return self.backend

    def require_ready(self) -> Backend:
        """The backend, or a 503 saying why there is none to use."""
        if self.state is ServiceState.READY and self.backend is not None:
            return self.backend
        self.metrics.rejected.labels("not_ready").inc()
        if self.state is ServiceState.FAILED:
            raise ApiError(503, "model_failed", f"the model could not be loaded: {self.error}")
        if self.state is ServiceState.STOPPING:
            raise ApiError(503, "shutting_down", "the server is shutting down", {"Retry-After": "1"})
        raise ApiError(503, "not_ready", "the model is loading or warming up", {"Retry-After": "5"})

    # -- requests ---------------------------------------------------------------------------

    async def detect(
        self, images: Sequence[EncodedImage], options: DetectOptions, *, keep_images: bool = False
    ) -> list[ImageResult]:
        """Detections for each image, in order.

        Raises:
            ApiError: 503 (+ Retry-After) when not ready or the queue is full, 504 past the
                request timeout, 400/413/422 for an image that cannot be used.
        """
        self.require_ready()
        self._admit(len(images))
        try:
            return await asyncio.wait_for(
                self._detect(images, options, keep_images), timeout=self.settings.request_timeout_s
            )
        except asyncio.TimeoutError:
            self.metrics.rejected.labels("timeout").inc()
            raise ApiError(
                504, "timeout", f"no answer within {self.settings.request_timeout_s:g} s (request_timeout_s)"
            ) from None
        finally:
            self._release(len(images))

    async def run_in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the preprocessing threads, in its own turn."""
        return await self._in_pool(object(), fn, *args)

    def _in_pool(self, owner: object, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        return asyncio.wrap_future(self._pool.submit(owner, fn, *args))

    def require_capacity(self) -> Backend:
        """:meth:`require_ready`, and a 503 when the queue is full already: checked before a
        request body is read, so that an overloaded server does not buffer uploads it will refuse."""
        backend = self.require_ready()
        if self._in_flight >= self.settings.max_queue:
            self._queue_full()
        return backend

    def _queue_full(self) -> NoReturn:
        self.metrics.rejected.labels("queue_full").inc()
        raise ApiError(
            503, "queue_full",
            f"{self._in_flight} images in progress (max_queue {self.settings.max_queue}); retry later",
            {"Retry-After": "1"},
        )  # fmt: skip

    def _admit(self, count: int) -> None:
        with self._lock:
            if self._in_flight + count > self.settings.max_queue:
                self._queue_full()
            self._in_flight += count
            self.metrics.in_flight.set(self._in_flight)

    def _release(self, count: int) -> None:
        with self._lock:
            self._in_flight -= count
            self.metrics.in_flight.set(self._in_flight)

    async def _detect(
        self, images: Sequence[EncodedImage], options: DetectOptions, keep_images: bool
    ) -> list[ImageResult]:
        started = time.perf_counter()
        request = object()  # the pool serves this request's tasks in turn with other requests'
        await self._in_pool(request, self._check_pixels, images)
        prepared: list[_Prepared] = list(
            await asyncio.gather(
                *(self._in_pool(request, self._prepare, image, keep_images, started) for image in images)
            )
        )
        futures: list[Future[BatchResult]] = []
        try:
            for item in prepared:
                futures.append(self._submit(item))
            results = list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        outcome: list[ImageResult] = await self._in_pool(request, self._finish, prepared, results, options)
        self.metrics.images.inc(len(outcome))
        return outcome

    def _submit(self, item: _Prepared) -> Future[BatchResult]:
        if self.batcher is None:
            raise ApiError(503, "not_ready", "the model is not loaded yet")
        try:
            return self.batcher.submit(item.batch.images, item.batch.image_sizes[0])
        except QueueFullError as exc:
            self.metrics.rejected.labels("queue_full").inc()
            raise ApiError(503, "queue_full", f"{exc}; retry later", {"Retry-After": "1"}) from None
        except BatcherClosedError:
            raise ApiError(
                503, "shutting_down", "the server is shutting down", {"Retry-After": "1"}
            ) from None

    def _check_pixels(self, images: Sequence[EncodedImage]) -> None:
        """The request's pixel budget, from the image headers, before anything is decoded."""
        total = 0
        for encoded in images:
            name = encoded.name or "image"
            with _image_errors(name):
                width, height = image_size(encoded.data, max_pixels=self.settings.max_image_pixels, name=name)
            total += width * height
        if total > self.settings.max_request_pixels:
            raise ApiError(
                413, "too_many_pixels",
                f"the {len(images)} images of this request hold {total} pixels; at most "
                f"{self.settings.max_request_pixels} per request (max_request_pixels)",
            )  # fmt: skip

    def _prepare(self, encoded: EncodedImage, keep_image: bool, started: float) -> _Prepared:
        """Decode and preprocess one image (on a pool thread)."""
        name = encoded.name or "image"
        with _image_errors(name):
            image = decode_image(encoded.data, max_pixels=self.settings.max_image_pixels, name=name)
        return self._prepare_array(image, encoded.name, keep_image, started)

    def _prepare_array(
        self, image: np.ndarray, name: str | None, keep_image: bool, started: float
    ) -> _Prepared:
        spec = self.require_backend().input_spec
        begin = time.perf_counter()
        try:
            batch = prepare_image(image, spec)
        except UnsupportedImageSizeError as exc:
            raise ApiError(422, "unsupported_image_size", f"{name or 'image'}: {exc}") from None
        end = time.perf_counter()
        self.metrics.preprocess_seconds.observe(end - begin)
        return _Prepared(name, batch, image if keep_image else None, end - (started or begin))

    @torch.inference_mode()
    def _finish(
        self, prepared: Sequence[_Prepared], results: Sequence[BatchResult], options: DetectOptions
    ) -> list[ImageResult]:
        """Raw outputs -> detections in original pixels (the Predictor's last step), then the
        request's options."""
        backend = self.require_backend()
        outcome = []
        for item, result in zip(prepared, results, strict=True):
            begin = time.perf_counter()
            detections = detections_from_outputs(
                result.outputs, item.batch, backend.decoder, backend.class_names, options.score_threshold
            )
            detections = _apply_options(detections, options)
            outcome.append(
                ImageResult(
                    item.name, detections, item.image, result, item.seconds, time.perf_counter() - begin
                )
            )
        return outcome


@contextmanager
def _image_errors(name: str) -> Iterator[None]:
    """Decoding failures as the API answers them: 413 too large, 400 anything else."""
    try:
        yield
    except ImageTooLargeError as exc:
        raise ApiError(413, "image_too_large", str(exc)) from None
    except ImageDecodeError as exc:
        raise ApiError(400, "invalid_image", str(exc)) from None
    except Exception as exc:  # Pillow's plugins raise more than they document on corrupt files
        logger.info("%s: decoder raised %s: %s", name, type(exc).__name__, exc)
        raise ApiError(400, "invalid_image", f"{name}: not a decodable image") from None


def _apply_options(detections: Detections, options: DetectOptions) -> Detections:
    """Keep the requested classes, then the best ``max_detections`` (detections are sorted)."""
    keep = torch.arange(len(detections))
    if options.class_ids is not None:
        wanted = torch.tensor(sorted(options.class_ids), dtype=detections.classes.dtype)
        keep = keep[torch.isin(detections.classes.cpu(), wanted)]
    if options.max_detections is not None:
        keep = keep[: options.max_detections]
    if len(keep) == len(detections):
        return detections
    index = keep.to(detections.scores.device)
    return Detections(
        detections.boxes[index],
        detections.scores[index],
        detections.classes[index],
        [detections.labels[i] for i in keep.tolist()],
        width=detections.width,
        height=detections.height,
    )
