"""One request from uploaded bytes to a served transcript: decode, detect the language, route, run, learn.

An A/B experiment may assign the request to an arm before routing (the arm's variant serves it, as if
pinned); after serving, the request is remembered for feedback and may be handed to shadow scoring.
The HTTP layer only parses the form and renders the result.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import anyio

from app.background import BackgroundWorkers
from app.experiments.definitions import Arm, Experiment
from app.experiments.registry import ExperimentRegistry
from app.experiments.results import ExperimentTracker
from app.feedback import RecentRequests, ServedRecord
from app.inference import InferenceQueue
from app.language import LanguageDetector, LanguageGuess
from app.latency import LatencyTracker
from app.metrics import HushMetrics
from app.pool import VariantLease, VariantPool
from app.routing import NoRouteError, RouteDecision, RouteReason, RouteRequest, RoutingPolicy
from app.settings import AUTO_MODEL, WHISPER_1, ServerOptions
from app.shadow import ShadowJob, ShadowScorer
from model_store.audio import decode_audio
from model_store.errors import CorruptVariantError, VariantNotFoundError
from model_store.manifest import SizeTier
from model_store.transcription import SAMPLE_RATE, Audio, Task, TranscribeOptions, Transcription

logger = logging.getLogger(__name__)

ENGLISH = "en"


@dataclass(frozen=True)
class TranscriptionRequest:
    """A transcription or translation asked for, its parameters already checked."""

    audio: bytes
    model: str | None = None  # None, "auto", "whisper-1" or a variant id
    language: str | None = None  # an ISO 639-1 code; None detects it
    task: Task = "transcribe"
    tier: SizeTier | None = None
    prompt: str | None = None
    temperature: float = 0.0  # 0: the whole fallback schedule; > 0: the schedule from there
    word_timestamps: bool = False
    sticky_key: str | None = None  # who the client is, for A/B assignment (client id or API key)


@dataclass(frozen=True)
class Assignment:
    """The experiment arm a request was assigned to."""

    experiment: Experiment
    arm: Arm


@dataclass
class ABParts:
    """The experiment, feedback and shadow-scoring parts the service works with (all optional)."""

    experiments: ExperimentRegistry = field(default_factory=ExperimentRegistry)
    tracker: ExperimentTracker = field(default_factory=lambda: ExperimentTracker(1000))
    recent: RecentRequests | None = None
    shadow: ShadowScorer | None = None


@dataclass
class RequestTrace:
    """What the response headers report about a request; filled in as the request goes."""

    request_id: str
    variant: str | None = None
    route_reason: str | None = None
    experiment: str | None = None
    arm: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)  # stage -> milliseconds (Server-Timing)


@dataclass(frozen=True)
class ServedTranscription:
    """A transcript with how it was produced."""

    transcription: Transcription
    decision: RouteDecision
    language_guess: LanguageGuess | None
    queued_seconds: float
    inference_seconds: float


class TranscriptionService:
    """Serves transcription requests with the pool, the router and the inference queue."""

    def __init__(
        self,
        options: ServerOptions,
        *,
        pool: VariantPool,
        queue: InferenceQueue,
        policy: RoutingPolicy,
        latency: LatencyTracker,
        detector: LanguageDetector,
        metrics: HushMetrics | None = None,
        ab: ABParts | None = None,
        background: BackgroundWorkers | None = None,
    ) -> None:
        self.options = options
        self.pool = pool
        self.queue = queue
        self.policy = policy
        self.latency = latency
        self.detector = detector
        self.metrics = metrics
        self.ab = ab if ab is not None else ABParts()
        self.background = background if background is not None else BackgroundWorkers(queue, workers=0)

    def aliases(self) -> dict[str, str]:
        """The model names that are not variant ids, and what each means here: ``auto`` or a variant id."""
        return {WHISPER_1: self.options.default_model, AUTO_MODEL: AUTO_MODEL}

    def pinned_model(self, model: str | None) -> str | None:
        """The variant a request pins, or None to route; raises VariantNotFoundError for unknown ids."""
        name = (model or "").strip() or WHISPER_1
        name = self.aliases().get(name, name)
        if name == AUTO_MODEL:
            return None
        self.pool.manifest(name)
        return name

    def temperatures(self, temperature: float) -> tuple[float, ...]:
        """Whisper's fallback schedule, starting at the request's temperature when it is above 0."""
        schedule = self.options.temperatures
        if temperature <= 0:
            return schedule
        return (temperature, *(step for step in schedule if step > temperature))

    async def transcribe(self, request: TranscriptionRequest, trace: RequestTrace) -> ServedTranscription:
        pinned = self.pinned_model(request.model)
        received = started = time.perf_counter()
        audio = await anyio.to_thread.run_sync(self._decode, request.audio)
        trace.timings_ms["decode"] = (time.perf_counter() - started) * 1000
        guess: LanguageGuess | None = None
        language = request.language
        if language is None and pinned is not None and not self.pool.manifest(pinned).multilingual:
            language = ENGLISH  # an English-only model was asked for: nothing to detect
        if language is None:
            started = time.perf_counter()
            guess = await self.detector.detect(audio)
            trace.timings_ms["detect"] = (time.perf_counter() - started) * 1000
            language = guess.language
        route = RouteRequest(
            language,
            len(audio) / SAMPLE_RATE,
            request.task,
            request.tier,
            pinned,
            detected_by=guess.variant_id if guess is not None else None,
        )
        options = TranscribeOptions(
            language=language,
            task=request.task,
            temperatures=self.temperatures(request.temperature),
            initial_prompt=request.prompt or None,
            word_timestamps=request.word_timestamps,
        )
        assignment = self._assign(request, route, trace)
        decision = self._route(route, guess, trace, assignment)
        try:
            served = await self._run(decision, audio, options, guess)
        except (VariantNotFoundError, CorruptVariantError, FileNotFoundError):
            # Removed from the store between routing and loading: route again, once, unless pinned.
            if pinned is not None or not await self._left_store(decision.variant_id):
                raise
            logger.warning(
                "request %s: %s left the store; routing again", trace.request_id, decision.variant_id
            )
            decision = self._route(route, guess, trace)
            served = await self._run(decision, audio, options, guess)
        trace.timings_ms["queue"] = served.queued_seconds * 1000
        trace.timings_ms["inference"] = served.inference_seconds * 1000
        self._after_serving(request, trace, served, audio, options, time.perf_counter() - received)
        return served

    def _assign(
        self, request: TranscriptionRequest, route: RouteRequest, trace: RequestTrace
    ) -> Assignment | None:
        """The experiment arm of a routed request (the sticky key, else the request id, decides)."""
        if request.task != "transcribe":
            return None
        found = self.ab.experiments.assign(
            request.sticky_key or trace.request_id,
            language=route.language,
            tier=route.tier,
            routed=route.pinned is None,
        )
        return None if found is None else Assignment(*found)

    def _after_serving(
        self,
        request: TranscriptionRequest,
        trace: RequestTrace,
        served: ServedTranscription,
        audio: Audio,
        options: TranscribeOptions,
        seconds: float,
    ) -> None:
        """Count the experiment's arm, remember the request for feedback, start shadow work."""
        if request.task != "transcribe":
            return  # a translation's text is not in the audio's language: nothing to score it against
        record = ServedRecord(
            trace.request_id,
            served.decision.variant_id,
            options.language or served.transcription.language,
            served.transcription.text,
            trace.experiment,
            trace.arm,
        )
        mirror: Arm | None = None
        if trace.experiment is not None and trace.arm is not None:
            self.ab.tracker.served(trace.experiment, trace.arm, seconds)
            if self.metrics is not None:
                self.metrics.ab_request_duration.labels(experiment=trace.experiment, arm=trace.arm).observe(
                    seconds
                )
            experiment = self.ab.experiments.find(trace.experiment)
            mirror = experiment.mirror if experiment is not None else None
        if self.ab.recent is not None:
            self.ab.recent.remember(record)
        shadow = self.ab.shadow
        if shadow is not None:
            sampled = shadow.sampled()
            if sampled or mirror is not None:
                shadow.submit(ShadowJob(audio, options, record, score=sampled, mirror=mirror))

    async def run_in_background(
        self, variant_id: str, audio: Audio, options: TranscribeOptions
    ) -> tuple[str, float]:
        """Transcribe as background work (shadow scoring, mirror arms): text and inference seconds.

        Raises BackgroundBusyError at once when there is no room for it (it is shed)."""
        with self.pool.lease(variant_id) as lease:
            timed = await self.background.run(
                lambda: _transcribe(lease, audio, options),
                timeout_seconds=self.options.request_timeout_seconds,
            )
        transcription, inference_seconds = timed.value
        return transcription.text, inference_seconds

    def _decode(self, data: bytes) -> Audio:
        return decode_audio(data, max_seconds=self.options.max_audio_seconds)

    def _route(
        self,
        route: RouteRequest,
        guess: LanguageGuess | None,
        trace: RequestTrace,
        assignment: Assignment | None = None,
    ) -> RouteDecision:
        decision = self._experiment_route(route, assignment) if assignment is not None else None
        if decision is None:
            trace.experiment = trace.arm = None
            decision = self.policy.choose(self.pool.manifests(), route, self.latency.slowdowns())
        else:
            assert assignment is not None
            trace.experiment, trace.arm = assignment.experiment.name, assignment.arm.name
            if self.metrics is not None:
                self.metrics.ab_assignments.labels(experiment=trace.experiment, arm=trace.arm).inc()
        explanation = decision.explanation if guess is None else f"{guess.describe()}; {decision.explanation}"
        trace.variant, trace.route_reason = decision.variant_id, explanation
        if self.metrics is not None:
            self.metrics.router_decisions.labels(
                variant=decision.variant_id, reason=decision.reason.value
            ).inc()
        logger.info("request %s -> %s: %s", trace.request_id, decision.variant_id, explanation)
        return decision

    def _experiment_route(self, route: RouteRequest, assignment: Assignment) -> RouteDecision | None:
        """Route to the arm's variant; None (route as usual) when it cannot serve the request here."""
        experiment, arm = assignment.experiment, assignment.arm
        try:
            decision = self.policy.choose(
                self.pool.manifests(), replace(route, pinned=arm.variant), self.latency.slowdowns()
            )
        except NoRouteError as error:
            logger.warning("experiment %s arm %s cannot serve: %s", experiment.name, arm.name, error)
            return None
        explanation = f"experiment {experiment.name} arm {arm.name}: {decision.chosen.describe()}"
        return replace(decision, reason=RouteReason.EXPERIMENT, explanation=explanation)

    async def _run(
        self, decision: RouteDecision, audio: Audio, options: TranscribeOptions, guess: LanguageGuess | None
    ) -> ServedTranscription:
        with self.pool.lease(decision.variant_id) as lease:
            timed = await self.queue.run(
                lambda: _transcribe(lease, audio, options),
                timeout_seconds=self.options.request_timeout_seconds,
            )
        transcription, inference_seconds = timed.value
        audio_seconds = len(audio) / SAMPLE_RATE
        self.latency.observe(
            decision.variant_id,
            (timed.queued_seconds + inference_seconds) * 1000,
            modelled_ms=decision.chosen.modelled_ms,
            audio_seconds=audio_seconds,
            measured=decision.chosen.measured,
        )
        if self.metrics is not None:
            self.metrics.inference_duration.labels(variant=decision.variant_id).observe(inference_seconds)
            self.metrics.audio_processed.labels(variant=decision.variant_id).inc(audio_seconds)
            if audio_seconds > 0:
                self.metrics.real_time_factor.labels(variant=decision.variant_id).observe(
                    inference_seconds / audio_seconds
                )
        return ServedTranscription(transcription, decision, guess, timed.queued_seconds, inference_seconds)

    async def _left_store(self, variant_id: str) -> bool:
        await anyio.to_thread.run_sync(self.pool.sync_with_store)
        return variant_id not in {manifest.id for manifest in self.pool.manifests()}


def _transcribe(lease: VariantLease, audio: Audio, options: TranscribeOptions) -> tuple[Transcription, float]:
    """Runs on a worker thread: load the variant if needed, then transcribe (timed without the load)."""
    transcriber = lease.transcriber()
    started = time.perf_counter()
    transcription = transcriber.transcribe(audio, options)
    return transcription, time.perf_counter() - started
