"""What the server remembers of the requests it served, so that a client can later post the true
transcript (``POST /v1/feedback``) and have it scored.

The memory is bounded in time (``ttl_seconds``) and size (``max_requests``, the oldest forgotten
first). A forgotten request id is remembered as forgotten (in a list as long as the memory), so that
feedback that comes too late gets a clear "expired" instead of "unknown". Each request takes
feedback once: a second post would count its errors twice.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class ServedRecord:
    """One served request, as feedback needs it."""

    request_id: str
    variant: str
    language: str
    text: str  # what the client received
    experiment: str | None = None
    arm: str | None = None


class Forgotten(StrEnum):
    EXPIRED = "expired"
    SCORED = "scored"


class FeedbackError(Exception):
    """Feedback that cannot be scored; ``outcome`` is its label in ``hush_feedback_total``."""

    outcome = "unknown"

    def __init__(self, request_id: str, message: str) -> None:
        super().__init__(message)
        self.request_id = request_id


class UnknownRequestError(FeedbackError):
    outcome = "unknown"


class ExpiredRequestError(FeedbackError):
    outcome = "expired"


class DuplicateFeedbackError(FeedbackError):
    outcome = "duplicate"


class RecentRequests:
    """Served requests by id, for ``ttl_seconds`` and at most ``max_requests`` of them."""

    def __init__(
        self, *, ttl_seconds: float, max_requests: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_requests = max_requests
        self._clock = clock
        self._lock = threading.Lock()
        self._records: OrderedDict[str, tuple[float, ServedRecord]] = OrderedDict()  # oldest first
        self._forgotten: OrderedDict[str, Forgotten] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._records)

    def remember(self, record: ServedRecord) -> None:
        with self._lock:
            self._records.pop(record.request_id, None)
            self._forgotten.pop(record.request_id, None)
            self._records[record.request_id] = (self._clock(), record)
            while len(self._records) > self.max_requests:
                oldest, _ = self._records.popitem(last=False)
                self._forget(oldest, Forgotten.EXPIRED)
            self._expire()

    def claim(self, request_id: str) -> ServedRecord:
        """The request's record, taken out of the memory (feedback is accepted once)."""
        with self._lock:
            self._expire()
            entry = self._records.pop(request_id, None)
            if entry is not None:
                self._forget(request_id, Forgotten.SCORED)
                return entry[1]
            forgotten = self._forgotten.get(request_id)
        minutes = self.ttl_seconds / 60
        if forgotten is Forgotten.EXPIRED:
            raise ExpiredRequestError(
                request_id,
                f"request {request_id!r} is too old for feedback: the server keeps the last "
                f"{self.max_requests} requests for {minutes:g} minutes",
            )
        if forgotten is Forgotten.SCORED:
            raise DuplicateFeedbackError(request_id, f"request {request_id!r} already received feedback")
        raise UnknownRequestError(
            request_id,
            f"no request {request_id!r} was served by this server (use the X-Request-Id of a "
            "transcription response; behind a load balancer, send feedback with the same client id)",
        )

    def _expire(self) -> None:
        deadline = self._clock() - self.ttl_seconds
        while self._records:
            request_id, (served_at, _) = next(iter(self._records.items()))
            if served_at > deadline:
                break
            del self._records[request_id]
            self._forget(request_id, Forgotten.EXPIRED)

    def _forget(self, request_id: str, why: Forgotten) -> None:
        self._forgotten[request_id] = why
        self._forgotten.move_to_end(request_id)
        while len(self._forgotten) > self.max_requests:
            self._forgotten.popitem(last=False)
