"""What each variant has been costing on this server, as moving estimates per variant.

The router starts from each variant's cost model (:mod:`app.cost_model`, built from its measured
latency) and, once the variant has served requests here, scales it by the moving estimate of observed
over modelled milliseconds: the *slowdown* (above 1 when this server is busier or slower than the
machine that measured it). An observation is the request's queue wait plus the transcriber's own time
(model loading is left out: a cold start would otherwise haunt the estimate). The observed
milliseconds per audio second are tracked too, for reporting.
"""

from __future__ import annotations

import threading

from app.cost_model import MIN_AUDIO_SECONDS


class LatencyTracker:
    """Exponentially weighted moving averages per variant: slowdown and ms per audio second."""

    def __init__(self, alpha: float) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._slowdowns: dict[str, float] = {}
        self._rates: dict[str, float] = {}
        self._lock = threading.Lock()

    def observe(
        self, variant_id: str, elapsed_ms: float, *, modelled_ms: float, audio_seconds: float, measured: bool
    ) -> float:
        """Fold one request in; returns the new slowdown. ``measured``: the cost model comes from the
        variant's own measured latency, so a fresh estimate starts at 1 and moves from there (else the
        first observation replaces the guess)."""
        slowdown = elapsed_ms / max(modelled_ms, 1e-6)
        rate = elapsed_ms / max(audio_seconds, MIN_AUDIO_SECONDS)
        with self._lock:
            previous = self._slowdowns.get(variant_id, 1.0 if measured else None)
            self._slowdowns[variant_id] = self._moved(previous, slowdown)
            self._rates[variant_id] = self._moved(self._rates.get(variant_id), rate)
            return self._slowdowns[variant_id]

    def _moved(self, previous: float | None, observed: float) -> float:
        return observed if previous is None else previous + self.alpha * (observed - previous)

    def slowdowns(self) -> dict[str, float]:
        """A snapshot: variant id -> observed over modelled milliseconds."""
        with self._lock:
            return dict(self._slowdowns)

    def estimates(self) -> dict[str, float]:
        """A snapshot: variant id -> observed ms per audio second."""
        with self._lock:
            return dict(self._rates)

    def forget(self, variant_id: str) -> None:
        """Drop a variant's estimates (it was removed, or replaced by new weights)."""
        with self._lock:
            self._slowdowns.pop(variant_id, None)
            self._rates.pop(variant_id, None)
