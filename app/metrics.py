"""Prometheus metrics, registered on an injected registry (each app, and each test, has its own).

Names carry the ``hush_`` prefix and base units (seconds, bytes, ``_total`` for counters). Label values
come from bounded sets only: endpoint templates, variant ids from the store, devices, route reasons
and status codes; never from client input.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.routing import RouteReason

# Seconds: from a fast HTTP error to a long transcription.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
UNLOAD_CAUSES = ("evicted", "removed", "replaced", "shutdown")


class HushMetrics:
    """Every metric the server exports."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "hush_http_requests",
            "HTTP requests answered, by endpoint template, serving variant ('none': not routed) and status.",
            ["endpoint", "variant", "status"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "hush_http_request_duration_seconds",
            "Time from receiving a request to the start of its response.",
            ["endpoint"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.inference_duration = Histogram(
            "hush_inference_duration_seconds",
            "Time a transcriber spent on one request (no queueing, no loading).",
            ["variant"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.audio_processed = Counter(
            "hush_audio_processed_seconds",
            "Seconds of audio transcribed.",
            ["variant"],
            registry=registry,
        )
        self.queue_wait = Histogram(
            "hush_queue_wait_seconds",
            "Time an inference job waited for a worker.",
            ["device"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "hush_queue_depth", "Inference jobs waiting for a worker.", ["device"], registry=registry
        )
        self.inference_running = Gauge(
            "hush_inference_running", "Inference jobs running now.", ["device"], registry=registry
        )
        self.queue_rejections = Counter(
            "hush_queue_rejections",
            "Requests refused with a 429 because the device's queue was full.",
            ["device"],
            registry=registry,
        )
        self.router_decisions = Counter(
            "hush_router_decisions",
            "Routing decisions by chosen variant and reason.",
            ["variant", "reason"],
            registry=registry,
        )
        self.model_loads = Counter(
            "hush_model_loads", "Variants loaded into memory.", ["variant"], registry=registry
        )
        self.model_load_duration = Histogram(
            "hush_model_load_duration_seconds",
            "Time to verify and load a variant.",
            ["variant"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.model_unloads = Counter(
            "hush_model_unloads",
            "Variants unloaded, by cause (evicted, removed, replaced, shutdown).",
            ["variant", "cause"],
            registry=registry,
        )
        self.loaded_memory = Gauge(
            "hush_loaded_model_memory_bytes",
            "Estimated memory of each loaded variant (0 when not loaded).",
            ["variant"],
            registry=registry,
        )

    def track_device(self, device: str) -> None:
        """Initialise the device's series, so that they exist before the first request."""
        self.queue_depth.labels(device=device).set(0)
        self.inference_running.labels(device=device).set(0)
        self.queue_rejections.labels(device=device)
        self.queue_wait.labels(device=device)

    def track_variants(self, variant_ids: Iterable[str]) -> None:
        """Initialise the series of the store's variants (called whenever the catalog changes)."""
        for variant_id in variant_ids:
            self.audio_processed.labels(variant=variant_id)
            self.inference_duration.labels(variant=variant_id)
            self.model_loads.labels(variant=variant_id)
            self.loaded_memory.labels(variant=variant_id)
            for reason in RouteReason:
                self.router_decisions.labels(variant=variant_id, reason=reason.value)
            for cause in UNLOAD_CAUSES:
                self.model_unloads.labels(variant=variant_id, cause=cause)

    def variant_loaded(self, variant_id: str, seconds: float, memory_bytes: int) -> None:
        self.model_loads.labels(variant=variant_id).inc()
        self.model_load_duration.labels(variant=variant_id).observe(seconds)
        self.loaded_memory.labels(variant=variant_id).set(memory_bytes)

    def variant_unloaded(self, variant_id: str, cause: str) -> None:
        self.model_unloads.labels(variant=variant_id, cause=cause).inc()
        self.loaded_memory.labels(variant=variant_id).set(0)
