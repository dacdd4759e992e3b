"""The server's long-lived parts, built once per app by its lifespan and torn down with it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import StrEnum

from app.background import BackgroundWorkers
from app.experiments.registry import ExperimentRegistry
from app.experiments.results import ExperimentTracker
from app.feedback import RecentRequests
from app.inference import InferenceQueue
from app.language import LanguageDetector
from app.latency import LatencyTracker
from app.live_cer import LiveCer
from app.metrics import HushMetrics
from app.pool import Opener, VariantPool, open_verified
from app.routing import NoRouteError, RouteRequest, RoutingPolicy
from app.service import ABParts, TranscriptionService
from app.settings import AUTO_MODEL, ServerSettings
from app.shadow import ShadowScorer
from model_store.store import ModelStore

logger = logging.getLogger(__name__)

READINESS_PROBE = RouteRequest(language="en", audio_seconds=30.0)  # the request a server must be ready for


class ReadinessStatus(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass
class Readiness:
    """Whether the default variants are loaded (``/readyz``)."""

    status: ReadinessStatus = ReadinessStatus.LOADING
    variants: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class AppState:
    """Everything a request handler may need, injected through ``app/deps.py``."""

    settings: ServerSettings
    store: ModelStore
    metrics: HushMetrics
    pool: VariantPool
    queue: InferenceQueue
    latency: LatencyTracker
    policy: RoutingPolicy
    detector: LanguageDetector
    service: TranscriptionService
    ab: ABParts
    live_cer: LiveCer
    background: BackgroundWorkers
    readiness: Readiness = field(default_factory=Readiness)

    def close(self) -> None:
        self.background.shutdown()
        self.queue.shutdown()
        self.pool.close()
        self.metrics.unwatch_catalog()


def build_state(
    settings: ServerSettings, store: ModelStore, metrics: HushMetrics, opener: Opener = open_verified
) -> AppState:
    """Wire the parts together (loads no model)."""
    server = settings.server
    device = settings.runtime.resolved_device()
    pool = VariantPool(
        store,
        settings.runtime,
        memory_budget_bytes=server.memory_budget_bytes,
        verify=settings.store.verify_on_open,
        opener=opener,
        metrics=metrics,
    )
    workers = settings.inference_workers(device)
    queue = InferenceQueue(device, workers=workers, capacity=server.queue_size, metrics=metrics)
    latency = LatencyTracker(server.latency_ewma_alpha)
    policy = RoutingPolicy(server.quality_floor_cer, device)
    detector = LanguageDetector(
        pool,
        queue,
        preferred_variant=server.language_detection_variant,
        timeout_seconds=server.request_timeout_seconds,
    )
    experiments = ExperimentRegistry.from_file(
        settings.experiments.file, persist=settings.experiments.persist
    )
    for experiment in experiments.all():
        metrics.track_arms(experiment.name, [arm.name for arm in experiment.all_arms])
    tracker = ExperimentTracker(settings.experiments.latency_window)
    recent = RecentRequests(
        ttl_seconds=settings.feedback.ttl_seconds, max_requests=settings.feedback.max_requests
    )
    ab = ABParts(experiments=experiments, tracker=tracker, recent=recent)
    live_cer = LiveCer(metrics, tracker)
    background = BackgroundWorkers(queue, workers=server.background_workers)
    service = TranscriptionService(
        server,
        pool=pool,
        queue=queue,
        policy=policy,
        latency=latency,
        detector=detector,
        metrics=metrics,
        ab=ab,
        background=background,
    )
    ab.shadow = ShadowScorer(
        settings.shadow,
        catalog=pool.manifests,
        runtime=settings.runtime,
        runner=service.run_in_background,
        live_cer=live_cer,
        tracker=tracker,
        metrics=metrics,
    )
    metrics.watch_catalog(pool.manifests)
    return AppState(
        settings, store, metrics, pool, queue, latency, policy, detector, service, ab, live_cer, background
    )


def default_variants(state: AppState) -> list[str]:
    """The variants to load before the server says it is ready."""
    server = state.settings.server
    if server.default_variants:
        return list(server.default_variants)
    if server.default_model != AUTO_MODEL:
        return [server.default_model]
    try:
        return [state.policy.choose(state.pool.manifests(), READINESS_PROBE, {}).variant_id]
    except NoRouteError:
        return []


def preload(state: AppState) -> None:
    """Load the default variants (blocking: run it in a thread) and record the outcome."""
    readiness = state.readiness
    readiness.variants = default_variants(state)
    try:
        state.pool.preload(readiness.variants)
    except Exception as error:
        logger.exception("could not load the default variants %s", readiness.variants)
        readiness.status, readiness.error = ReadinessStatus.FAILED, str(error)
        return
    readiness.status = ReadinessStatus.READY
    logger.info("ready: loaded %s", readiness.variants or "nothing (the store is empty)")
