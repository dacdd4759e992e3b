"""Prometheus metrics, registered on an injected registry (each app, and each test, has its own).

Names carry the ``hush_`` prefix and base units (seconds, bytes, ``_total`` for counters). Label values
come from bounded sets only: endpoint templates, variant ids from the store, devices, route reasons
and status codes; never from client input.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from app.routing import RouteReason
from model_store.manifest import Manifest

# Seconds: from a fast HTTP error to a long transcription.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
UNLOAD_CAUSES = ("evicted", "removed", "replaced", "shutdown")
# Seconds of compute per second of audio: from a fast GPU (0.01) to slower than real time.
REAL_TIME_FACTOR_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0)
CER_SOURCES = ("feedback", "shadow")
FEEDBACK_OUTCOMES = ("scored", "unknown", "expired", "duplicate", "empty_reference")
# Calls merged into one engine call (dynamic batching): powers of two up to the largest sensible batch.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
BATCH_STAGES = ("encode", "decode", "detect")
SHADOW_OUTCOMES = ("scored", "shed", "failed", "no_reference", "is_reference")


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

        self.batch_size = Histogram(
            "hush_batch_size",
            "Calls merged into each engine call by dynamic batching, by variant and stage (encode, decode, "
            "detect); only variants opened with batching active report.",
            ["variant", "stage"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_wait = Histogram(
            "hush_batch_wait_seconds",
            "Time the oldest call of each batch waited for company and for the engine, by variant and stage.",
            ["variant", "stage"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.real_time_factor = Histogram(
            "hush_inference_real_time_factor",
            "Seconds of inference per second of audio (below 1: faster than real time).",
            ["variant"],
            buckets=REAL_TIME_FACTOR_BUCKETS,
            registry=registry,
        )
        self.cer_edits = Counter(
            "hush_cer_edit_chars",
            "Character edits between served transcripts and their references (normalised text), by the "
            "serving variant, language and source (feedback: the client's true transcript; shadow: the "
            "reference variant's output). CER = rate(edits) / rate(reference chars), pooled over replicas.",
            ["variant", "language", "source"],
            registry=registry,
        )
        self.cer_reference_chars = Counter(
            "hush_cer_reference_chars",
            "Characters of the references that served transcripts were scored against.",
            ["variant", "language", "source"],
            registry=registry,
        )
        self.cer_scored = Counter(
            "hush_cer_scored_requests",
            "Requests scored against a reference, by variant, language and source.",
            ["variant", "language", "source"],
            registry=registry,
        )
        self.feedback = Counter(
            "hush_feedback",
            "Feedback posted, by outcome (scored, unknown, expired, duplicate, empty_reference).",
            ["outcome"],
            registry=registry,
        )
        self.shadow_jobs = Counter(
            "hush_shadow_jobs",
            "Shadow scoring jobs by outcome (scored; shed under load; failed; no_reference for the "
            "language; is_reference: served by the reference itself).",
            ["outcome"],
            registry=registry,
        )
        self.ab_assignments = Counter(
            "hush_ab_assignments",
            "Requests assigned to an experiment's arm (the mirror arm counts mirrored requests).",
            ["experiment", "arm"],
            registry=registry,
        )
        self.ab_request_duration = Histogram(
            "hush_ab_request_duration_seconds",
            "Time from receiving an experiment's request to its transcript (mirror: inference only), by arm.",
            ["experiment", "arm"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.ab_cer_edits = Counter(
            "hush_ab_cer_edit_chars",
            "Character edits of an experiment arm's transcripts against their references, by source.",
            ["experiment", "arm", "source"],
            registry=registry,
        )
        self.ab_cer_reference_chars = Counter(
            "hush_ab_cer_reference_chars",
            "Reference characters an experiment arm's transcripts were scored against, by source.",
            ["experiment", "arm", "source"],
            registry=registry,
        )
        for outcome in FEEDBACK_OUTCOMES:
            self.feedback.labels(outcome=outcome)
        for outcome in SHADOW_OUTCOMES:
            self.shadow_jobs.labels(outcome=outcome)
        self._catalog: Callable[[], Sequence[Manifest]] | None = None
        self._catalog_collector: CatalogCollector | None = None

    def watch_catalog(self, catalog: Callable[[], Sequence[Manifest]]) -> None:
        """Export each variant's manifest (``hush_variant_info``) and offline CER
        (``hush_cer_baseline_ratio``) as they are at every scrape, and initialise the CER series of the
        languages a variant was evaluated on whenever it joins the catalog."""
        self.unwatch_catalog()
        self._catalog = catalog
        self._catalog_collector = CatalogCollector(catalog)
        self.registry.register(self._catalog_collector)
        self.track_variants(manifest.id for manifest in catalog())

    def unwatch_catalog(self) -> None:
        if self._catalog_collector is not None:
            self.registry.unregister(self._catalog_collector)
        self._catalog, self._catalog_collector = None, None

    def track_cer(self, variant_id: str, language: str) -> None:
        for source in CER_SOURCES:
            self.cer_edits.labels(variant=variant_id, language=language, source=source)
            self.cer_reference_chars.labels(variant=variant_id, language=language, source=source)
            self.cer_scored.labels(variant=variant_id, language=language, source=source)

    def track_arms(self, experiment: str, arms: Iterable[str]) -> None:
        """Initialise an experiment's series (called when it is defined)."""
        for arm in arms:
            self.ab_assignments.labels(experiment=experiment, arm=arm)
            self.ab_request_duration.labels(experiment=experiment, arm=arm)
            for source in CER_SOURCES:
                self.ab_cer_edits.labels(experiment=experiment, arm=arm, source=source)
                self.ab_cer_reference_chars.labels(experiment=experiment, arm=arm, source=source)

    def forget_arms(self, experiment: str, arms: Iterable[str]) -> None:
        """Remove a deleted experiment's series."""
        for arm in arms:
            for metric in (self.ab_assignments, self.ab_request_duration):
                _remove(metric, experiment, arm)
            for source in CER_SOURCES:
                _remove(self.ab_cer_edits, experiment, arm, source)
                _remove(self.ab_cer_reference_chars, experiment, arm, source)

    def track_device(self, device: str) -> None:
        """Initialise the device's series, so that they exist before the first request."""
        self.queue_depth.labels(device=device).set(0)
        self.inference_running.labels(device=device).set(0)
        self.queue_rejections.labels(device=device)
        self.queue_wait.labels(device=device)

    def track_variants(self, variant_ids: Iterable[str]) -> None:
        """Initialise the series of the store's variants (called whenever the catalog changes)."""
        variant_ids = list(variant_ids)
        for variant_id in variant_ids:
            self.audio_processed.labels(variant=variant_id)
            self.inference_duration.labels(variant=variant_id)
            self.model_loads.labels(variant=variant_id)
            self.loaded_memory.labels(variant=variant_id)
            self.real_time_factor.labels(variant=variant_id)
            for reason in RouteReason:
                self.router_decisions.labels(variant=variant_id, reason=reason.value)
            for cause in UNLOAD_CAUSES:
                self.model_unloads.labels(variant=variant_id, cause=cause)

        if self._catalog is not None:
            wanted = set(variant_ids)
            for manifest in self._catalog():
                if manifest.id in wanted and manifest.eval is not None:
                    for language in manifest.eval.languages:
                        self.track_cer(manifest.id, language)

    def variant_loaded(self, variant_id: str, seconds: float, memory_bytes: int) -> None:
        self.model_loads.labels(variant=variant_id).inc()
        self.model_load_duration.labels(variant=variant_id).observe(seconds)
        self.loaded_memory.labels(variant=variant_id).set(memory_bytes)

    def batch_observer(self, variant_id: str) -> Callable[[str, int, float], None]:
        """What a batched transcriber of ``variant_id`` reports each engine call to (its series start
        at zero now, when it loads)."""
        for stage in BATCH_STAGES:
            self.batch_size.labels(variant=variant_id, stage=stage)
            self.batch_wait.labels(variant=variant_id, stage=stage)

        def observe(stage: str, size: int, waited_seconds: float) -> None:
            self.batch_size.labels(variant=variant_id, stage=stage).observe(size)
            self.batch_wait.labels(variant=variant_id, stage=stage).observe(waited_seconds)

        return observe

    def variant_unloaded(self, variant_id: str, cause: str) -> None:
        self.model_unloads.labels(variant=variant_id, cause=cause).inc()
        self.loaded_memory.labels(variant=variant_id).set(0)


def _remove(metric: Counter | Histogram, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never created
        metric.remove(*labels)


class CatalogCollector(Collector):
    """Reads the catalog at each scrape: one info series and one baseline per (variant, language)."""

    def __init__(self, catalog: Callable[[], Sequence[Manifest]]) -> None:
        self.catalog = catalog

    def describe(self) -> list[Metric]:
        return []  # collected on demand: the catalog changes while serving

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily(
            "hush_variant", "Each variant of the store with its manifest's labels.", labels=["variant"]
        )
        baseline = GaugeMetricFamily(
            "hush_cer_baseline_ratio",
            "Offline CER of each variant per language, from its manifest's evaluation (the drift baseline).",
            labels=["variant", "language"],
        )
        for manifest in self.catalog():
            info.add_metric(
                [manifest.id],
                {
                    "family": manifest.family,
                    "parent": manifest.parent or "",
                    "recipe": manifest.recipe.method,
                    "backend": manifest.backend,
                    "device": manifest.device,
                    "dtype": manifest.dtype,
                    "size_tier": manifest.size_tier,
                    "parameters": str(manifest.parameters),
                    "languages": ",".join(manifest.languages)[:200],
                    "eval_set": manifest.eval.corpus_id if manifest.eval is not None else "",
                },
            )
            if manifest.eval is not None:
                for language, score in sorted(manifest.eval.languages.items()):
                    baseline.add_metric([manifest.id, language], score.cer)
        yield info
        yield baseline
