"""Background inference (shadow scoring, mirror arms): its own workers, and always the first to go.

Clients' jobs go through the device's :class:`~app.inference.InferenceQueue`; background jobs never
enter it, so they never hold a client's queue slot or delay a client's job in the queue. A background
job runs on one of ``workers`` separate threads, and is *shed* (``BackgroundBusyError``) unless, at
that moment, one of those threads is idle and no client job waits in the device's queue: under load,
background work is dropped first and entirely. It still shares the device (CPU cores or GPU) with
the clients' jobs while it runs; ``workers=0`` turns background work off.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from app.inference import InferenceQueue, InferenceTimeoutError, Timed

T = TypeVar("T")


class BackgroundBusyError(Exception):
    """No room for background work now (clients waiting, or every background worker busy)."""


class BackgroundWorkers:
    """A few threads for background inference beside a device's client queue."""

    def __init__(self, queue: InferenceQueue, *, workers: int) -> None:
        if workers < 0:
            raise ValueError(f"need workers >= 0, got {workers}")
        self.queue = queue
        self.workers = workers
        self._executor = (
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"hush-{queue.device}-background")
            if workers
            else None
        )
        self._lock = threading.Lock()
        self._running = 0

    @property
    def running(self) -> int:
        return self._running

    async def run(self, job: Callable[[], T], *, timeout_seconds: float | None = None) -> Timed[T]:
        """Run ``job`` on a background thread now, or raise BackgroundBusyError at once."""
        with self._lock:
            busy = self._executor is None or self._running >= self.workers or self.queue.waiting > 0
            if not busy:
                self._running += 1
        if busy or self._executor is None:
            raise BackgroundBusyError(
                f"background work shed: {self.queue.waiting} client jobs waiting, "
                f"{self._running}/{self.workers} background workers busy"
            )
        started = time.perf_counter()

        def execute() -> T:
            try:
                return job()
            finally:
                with self._lock:
                    self._running -= 1

        future = self._executor.submit(execute)
        try:
            value = await asyncio.wait_for(asyncio.wrap_future(future), timeout_seconds)
        except TimeoutError:
            raise InferenceTimeoutError(
                f"the background job did not finish within {timeout_seconds:g} s"
            ) from None
        return Timed(value, 0.0, time.perf_counter() - started)

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
