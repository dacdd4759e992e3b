"""Merging concurrent calls into batches: many caller threads, one dispatcher thread, a bounded wait.

A caller :meth:`~MicroBatcher.submit`\\ s an item under a compatibility key and blocks until its result
comes back. The dispatcher takes the oldest waiting call and runs it together with the other waiting
calls of the same key (at most ``max_batch``) in one call of ``run``. It waits for company at most
``max_wait_seconds`` after the oldest call arrived, and not at all once every caller that could still
join is already waiting (``expected_callers``): a lone request pays nothing. Calls of other keys wait
for their own batch. An exception from ``run`` reaches every caller of that batch; a closed batcher
fails the calls still waiting; a caller gives up after ``timeout_seconds``: nothing blocks for ever.

One dispatcher means one engine call at a time per batcher, which is what an engine with one model
replica (CTranslate2 with ``inter_threads=1``, one GPU stream) does with concurrent callers anyway.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass, field
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
I = TypeVar("I")  # noqa: E741 - the item type, beside K(ey) and R(esult)
R = TypeVar("R")

BatchObserver = Callable[[K, int, float], None]
"""Called after each batch with its key, its size and how long its oldest call waited (seconds)."""


class BatcherClosedError(RuntimeError):
    """The batcher was closed (its model unloaded) before the call could run."""


class BatchTimeoutError(TimeoutError):
    """A batched call did not come back within the batcher's timeout."""


@dataclass(eq=False)
class _Call(Generic[K, I, R]):
    key: K
    item: I
    arrived: float
    future: Future[R] = field(default_factory=Future)


class MicroBatcher(Generic[K, I, R]):
    """Runs ``run(key, items) -> results`` (one result per item, in order) on batches of waiting calls."""

    def __init__(
        self,
        name: str,
        run: Callable[[K, list[I]], Sequence[R]],
        *,
        max_batch: int,
        max_wait_seconds: float,
        timeout_seconds: float,
        expected_callers: Callable[[], int] | None = None,
        observer: BatchObserver[K] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch < 1 or max_wait_seconds < 0 or timeout_seconds <= 0:
            raise ValueError(
                f"need max_batch >= 1, max_wait_seconds >= 0 and timeout_seconds > 0, got "
                f"{max_batch}, {max_wait_seconds} and {timeout_seconds}"
            )
        self.name = name
        self.max_batch = max_batch
        self.max_wait_seconds = max_wait_seconds
        self.timeout_seconds = timeout_seconds
        self.observer = observer
        self._run = run
        self._expected_callers = expected_callers
        self._clock = clock
        self._condition = threading.Condition()
        self._pending: list[_Call[K, I, R]] = []
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def waiting(self) -> int:
        with self._condition:
            return len(self._pending)

    def submit(self, key: K, item: I) -> R:
        """Run ``item`` in a batch of calls with the same ``key``; blocks until its result is back."""
        call: _Call[K, I, R] = _Call(key, item, self._clock())
        with self._condition:
            if self._closed:
                raise BatcherClosedError(f"the {self.name} batcher is closed")
            self._pending.append(call)
            self._start_locked()
            self._condition.notify_all()
        try:
            return call.future.result(timeout=self.timeout_seconds)
        except FutureTimeoutError:
            with self._condition:
                if call in self._pending:  # never started: take it back
                    self._pending.remove(call)
            raise BatchTimeoutError(
                f"a batched {self.name} call did not come back within {self.timeout_seconds:g} s"
            ) from None

    def wake(self) -> None:
        """Re-check the waiting calls (a caller that could have joined them has left)."""
        with self._condition:
            self._condition.notify_all()

    def close(self, timeout_seconds: float = 5.0) -> None:
        """Fail the calls still waiting, refuse new ones, and stop the dispatcher."""
        with self._condition:
            self._closed = True
            dropped, self._pending = self._pending, []
            self._condition.notify_all()
            thread = self._thread
        for call in dropped:
            call.future.set_exception(BatcherClosedError(f"the {self.name} batcher was closed"))
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_seconds)

    def _start_locked(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._dispatch, name=f"hush-batch-{self.name}", daemon=True
            )
            self._thread.start()

    def _dispatch(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                self._execute(batch)
        finally:  # whatever stopped the loop, no caller is left waiting on it
            with self._condition:
                self._closed = True
                dropped, self._pending = self._pending, []
            for call in dropped:
                call.future.set_exception(BatcherClosedError(f"the {self.name} batcher stopped"))

    def _next_batch(self) -> list[_Call[K, I, R]] | None:
        with self._condition:
            while not self._pending:
                if self._closed:
                    return None
                self._condition.wait()
            oldest = self._pending[0]
            deadline = oldest.arrived + self.max_wait_seconds
            while True:
                group = [call for call in self._pending if call.key == oldest.key][: self.max_batch]
                if self._closed or len(group) >= self.max_batch or self._nobody_else_coming_locked():
                    break
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            for call in group:
                self._pending.remove(call)
            return group

    def _nobody_else_coming_locked(self) -> bool:
        """Every caller that could join is already waiting (so waiting longer gains nothing)."""
        return self._expected_callers is not None and len(self._pending) >= self._expected_callers()

    def _execute(self, batch: list[_Call[K, I, R]]) -> None:
        live = [call for call in batch if call.future.set_running_or_notify_cancel()]
        if not live:
            return
        key = live[0].key
        waited = self._clock() - live[0].arrived
        try:
            results = self._run(key, [call.item for call in live])
            if len(results) != len(live):
                raise RuntimeError(
                    f"the {self.name} engine returned {len(results)} results for {len(live)} calls"
                )
        except Exception as error:  # every caller of the batch gets it
            logger.warning("batched %s call of %d failed: %s", self.name, len(live), error)
            for call in live:
                call.future.set_exception(error)
        else:
            for call, result in zip(live, results, strict=True):
                call.future.set_result(result)
        if self.observer is not None:
            try:
                self.observer(key, len(live), waited)
            except Exception:
                logger.exception("the %s batch observer failed", self.name)
