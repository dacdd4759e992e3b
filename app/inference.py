"""A bounded queue of inference jobs per device, run by worker threads (never on the event loop).

At most ``workers`` jobs run at once and ``capacity`` more wait; a job beyond that is refused at once
with :class:`QueueFullError` (the edge answers 429 with ``Retry-After``), so that a burst turns into
quick refusals instead of requests that time out. One server process drives one device: run a
replica per GPU.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from app.metrics import HushMetrics

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_RETRY_AFTER_SECONDS = 60
_JOB_SECONDS_ALPHA = 0.2  # weight of each finished job in the moving job duration (for Retry-After)


class QueueFullError(Exception):
    """The device's queue has no room; retry after ``retry_after_seconds``."""

    def __init__(self, device: str, limit: int, retry_after_seconds: int) -> None:
        super().__init__(
            f"the {device} inference queue is full ({limit} requests running or waiting); "
            f"retry in {retry_after_seconds} s"
        )
        self.device = device
        self.retry_after_seconds = retry_after_seconds


class InferenceTimeoutError(Exception):
    """A job did not finish within the request's time limit."""


@dataclass(frozen=True)
class Timed(Generic[T]):
    """A job's result with where its time went."""

    value: T
    queued_seconds: float  # waiting for a worker
    run_seconds: float  # running on a worker


class InferenceQueue:
    """Worker threads for one device, with a bounded number of jobs admitted."""

    def __init__(
        self, device: str, *, workers: int, capacity: int, metrics: HushMetrics | None = None
    ) -> None:
        if workers < 1 or capacity < 0:
            raise ValueError(f"need workers >= 1 and capacity >= 0, got {workers} and {capacity}")
        self.device = device
        self.workers = workers
        self.capacity = capacity
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"hush-{device}")
        self._lock = threading.Lock()
        self._waiting = 0
        self._running = 0
        self._job_seconds: float | None = None
        if metrics is not None:
            metrics.track_device(device)

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def running(self) -> int:
        return self._running

    def retry_after_seconds(self) -> int:
        """A guess at when a slot frees up: the queue's work ahead, spread over the workers."""
        with self._lock:
            job_seconds = self._job_seconds or 1.0
            ahead = self._waiting + self._running
        return max(1, min(MAX_RETRY_AFTER_SECONDS, math.ceil(job_seconds * ahead / self.workers)))

    async def run(self, job: Callable[[], T], *, timeout_seconds: float | None = None) -> Timed[T]:
        """Run ``job`` on a worker thread and wait for it without blocking the event loop."""
        with self._lock:
            admitted = self._waiting + self._running
            full = admitted >= self.workers + self.capacity
            if not full:
                self._waiting += 1
        if full:
            if self._metrics is not None:
                self._metrics.queue_rejections.labels(device=self.device).inc()
            raise QueueFullError(self.device, self.workers + self.capacity, self.retry_after_seconds())
        self._publish()
        submitted = time.perf_counter()
        started: list[float] = []
        finished: list[float] = []

        def execute() -> T:
            started.append(time.perf_counter())
            with self._lock:
                self._waiting -= 1
                self._running += 1
            self._publish()
            if self._metrics is not None:
                self._metrics.queue_wait.labels(device=self.device).observe(started[0] - submitted)
            try:
                return job()
            finally:
                finished.append(time.perf_counter())
                elapsed = finished[0] - started[0]
                with self._lock:
                    self._running -= 1
                    previous = self._job_seconds
                    self._job_seconds = (
                        elapsed if previous is None else previous + _JOB_SECONDS_ALPHA * (elapsed - previous)
                    )
                self._publish()

        future = self._executor.submit(execute)
        future.add_done_callback(self._forget_if_cancelled)
        try:
            value = await asyncio.wait_for(asyncio.wrap_future(future), timeout_seconds)
        except TimeoutError:
            raise InferenceTimeoutError(
                f"the transcription did not finish within {timeout_seconds:g} s"
            ) from None
        return Timed(value, started[0] - submitted, finished[0] - started[0])

    def _forget_if_cancelled(self, future: Future[Any]) -> None:
        if future.cancelled():  # it never started: it still counted as waiting
            with self._lock:
                self._waiting -= 1
            self._publish()

    def _publish(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.labels(device=self.device).set(self._waiting)
            self._metrics.inference_running.labels(device=self.device).set(self._running)

    def shutdown(self) -> None:
        """Drop the jobs still waiting and wait for the running ones."""
        self._executor.shutdown(wait=True, cancel_futures=True)
