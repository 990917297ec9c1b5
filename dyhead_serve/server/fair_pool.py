"""A thread pool that serves requests in turn, so that no request can monopolise decoding.

A plain pool runs tasks first come, first served: a request of sixteen 49-megapixel PNGs queues
sixteen long decodes ahead of every image that arrives after it, and other clients time out.
:class:`FairPool` keeps one queue per owner (a request) and gives each free thread the next task
of the owner that has waited longest since it was last served: a later request waits for at most
the decodes already running, not for the whole of an earlier request.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any

__all__ = ["FairPool"]

_Task = tuple["Future[Any]", Callable[..., Any], tuple[Any, ...]]


class FairPool:
    """``workers`` threads running submitted calls, owners served round robin.

    The threads start with the first task, so a pool that is never used (an app whose lifespan
    never runs, as when only its OpenAPI schema is read) holds no thread.

    Args:
        workers: number of threads.
        thread_name_prefix: names of the threads (``prefix_0``, ...).
    """

    def __init__(self, workers: int, thread_name_prefix: str) -> None:
        if workers < 1:
            raise ValueError(f"a pool needs at least one worker, got {workers}")
        self._queues: OrderedDict[Hashable, deque[_Task]] = OrderedDict()
        self._ready = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{thread_name_prefix}_{i}", daemon=True)
            for i in range(workers)
        ]
        self._started = False

    def submit(self, owner: Hashable, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``fn(*args)`` in ``owner``'s turn; cancelling the future before it runs drops it.

        Raises:
            RuntimeError: the pool is shut down.
        """
        future: Future[Any] = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the pool is shut down")
            self._queues.setdefault(owner, deque()).append((future, fn, args))
            self._ready.notify()
            if not self._started:
                self._started = True
                for thread in self._threads:
                    thread.start()
        return future

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> bool:
        """Take no new tasks; the threads finish the queued ones, then stop.

        With ``timeout``, queued tasks not started by then are cancelled and the wait ends at the
        deadline even if a task is still running (the threads are daemons: a decode that never
        ends cannot hold the process at exit). Returns whether every thread has stopped.
        """
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        if not (wait and self._started):
            return not self._started
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(deadline - time.monotonic(), 0.0))
        if any(thread.is_alive() for thread in self._threads):
            self._cancel_queued()
            return False
        return True

    def _cancel_queued(self) -> None:
        with self._ready:
            for tasks in self._queues.values():
                for future, _, _ in tasks:
                    future.cancel()
            self._queues.clear()

    def _next_task(self) -> _Task | None:
        with self._ready:
            while not self._queues and not self._closed:
                self._ready.wait()
            if not self._queues:
                return None  # closed and drained
            owner, tasks = next(iter(self._queues.items()))
            task = tasks.popleft()
            if tasks:
                self._queues.move_to_end(owner)  # its next task waits for every other owner's turn
            else:
                del self._queues[owner]
            return task

    def _work(self) -> None:
        while (task := self._next_task()) is not None:
            future, fn, args = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
