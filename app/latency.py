"""What each variant has been costing on this server: a moving estimate of milliseconds per audio second.

The router starts from the manifest's measured latency and follows these estimates once a variant has
served requests. An observation is the request's queue wait plus the transcriber's own time (model
loading is left out: a cold start would otherwise haunt the estimate), divided by the audio's seconds.
"""

from __future__ import annotations

import threading

from app.routing import MIN_AUDIO_SECONDS


class LatencyTracker:
    """Exponentially weighted moving averages of observed ms per audio second, per variant."""

    def __init__(self, alpha: float) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._estimates: dict[str, float] = {}
        self._lock = threading.Lock()

    def observe(
        self, variant_id: str, elapsed_ms: float, audio_seconds: float, baseline: float | None
    ) -> float:
        """Fold one observation in; ``baseline`` (the manifest's figure) seeds a fresh estimate."""
        rate = elapsed_ms / max(audio_seconds, MIN_AUDIO_SECONDS)
        with self._lock:
            previous = self._estimates.get(variant_id, baseline)
            estimate = rate if previous is None else previous + self.alpha * (rate - previous)
            self._estimates[variant_id] = estimate
        return estimate

    def estimates(self) -> dict[str, float]:
        """A snapshot: variant id -> estimated ms per audio second."""
        with self._lock:
            return dict(self._estimates)

    def forget(self, variant_id: str) -> None:
        """Drop a variant's estimate (it was removed, or replaced by new weights)."""
        with self._lock:
            self._estimates.pop(variant_id, None)
