"""Shadow scoring and mirror arms: transcription work done after the client has its answer.

For a sampled fraction of requests (``HUSH_SHADOW__SAMPLE_RATE``) the reference variant (the most
accurate for the language, or ``HUSH_SHADOW__REFERENCE_VARIANT``) transcribes the same audio in the
background; the CER of what was served, measured against the reference's output, is the shadow CER.
A request of an experiment with a mirror arm is also transcribed by the mirror's variant (never
returned), and the mirror's output is scored the same way. All of it runs on the background workers
(:mod:`app.background`): started only when one is idle and no client waits, else shed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from app.background import BackgroundBusyError
from app.experiments.definitions import Arm
from app.experiments.results import ExperimentTracker
from app.feedback import ServedRecord
from app.live_cer import ArmRef, LiveCer
from app.metrics import HushMetrics
from app.settings import ShadowOptions
from model_store.manifest import Manifest
from model_store.opener import runnable_here
from model_store.settings import RuntimeSettings
from model_store.transcription import Audio, TranscribeOptions

logger = logging.getLogger(__name__)

# Transcribes audio with a named variant in the background; returns the text and inference seconds.
BackgroundRunner = Callable[[str, Audio, TranscribeOptions], Awaitable[tuple[str, float]]]


@dataclass(frozen=True)
class ShadowJob:
    """Background work for one served request."""

    audio: Audio
    options: TranscribeOptions
    served: ServedRecord
    score: bool  # sampled for shadow scoring
    mirror: Arm | None = None  # the experiment's mirror arm (``served.experiment`` names it)


def reference_variant(
    manifests: Sequence[Manifest],
    language: str,
    runtime: RuntimeSettings,
    preferred: str | None = None,
    min_utterances: int = 1,
) -> str | None:
    """The variant whose output serves as the reference for ``language``: ``preferred`` when it is in
    the catalog, else the runnable variant with the lowest evaluated CER for the language (ties: the
    larger model). CERs measured on fewer than ``min_utterances`` count only when no variant has more."""
    ranked: list[tuple[bool, float, int, str]] = []
    for manifest in manifests:
        if manifest.id == preferred:
            return preferred
        score = manifest.eval.languages.get(language) if manifest.eval is not None else None
        if score is None or not runnable_here(manifest, runtime) or not manifest.covers(language):
            continue
        ranked.append((score.utterances < min_utterances, score.cer, -manifest.parameters, manifest.id))
    return min(ranked)[3] if ranked else None


class ShadowScorer:
    """Schedules and runs background transcriptions; never awaited by a client's request."""

    def __init__(
        self,
        options: ShadowOptions,
        *,
        catalog: Callable[[], Sequence[Manifest]],
        runtime: RuntimeSettings,
        runner: BackgroundRunner,
        live_cer: LiveCer,
        tracker: ExperimentTracker,
        metrics: HushMetrics,
    ) -> None:
        self.options = options
        self.catalog = catalog
        self.runtime = runtime
        self.runner = runner
        self.live_cer = live_cer
        self.tracker = tracker
        self.metrics = metrics
        self._random = random.Random(options.seed)
        self._tasks: set[asyncio.Task[None]] = set()

    def sampled(self) -> bool:
        """Whether the next request is shadow-scored."""
        rate = self.options.sample_rate
        return rate > 0 and self._random.random() < rate

    def submit(self, job: ShadowJob) -> None:
        """Start the job in the background (returns at once)."""
        task = asyncio.get_running_loop().create_task(self._run(job), name="hush-shadow")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait for the jobs started so far (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _run(self, job: ShadowJob) -> None:
        try:
            await self._score(job)
        except BackgroundBusyError:
            self.metrics.shadow_jobs.labels(outcome="shed").inc()
            logger.info("shadow work for request %s shed under load", job.served.request_id)
        except Exception:
            self.metrics.shadow_jobs.labels(outcome="failed").inc()
            logger.exception("shadow work for request %s failed", job.served.request_id)

    async def _score(self, job: ShadowJob) -> None:
        served = job.served
        served_arm = ArmRef(served.experiment, served.arm) if served.experiment and served.arm else None
        outputs: dict[str, tuple[str, ArmRef | None]] = {served.variant: (served.text, served_arm)}
        if job.mirror is not None and served.experiment is not None and job.mirror.variant != served.variant:
            text, seconds = await self.runner(job.mirror.variant, job.audio, job.options)
            self.metrics.ab_assignments.labels(experiment=served.experiment, arm=job.mirror.name).inc()
            self.metrics.ab_request_duration.labels(
                experiment=served.experiment, arm=job.mirror.name
            ).observe(seconds)
            self.tracker.served(served.experiment, job.mirror.name, seconds)
            outputs[job.mirror.variant] = (text, ArmRef(served.experiment, job.mirror.name))
        if not job.score and len(outputs) == 1:
            return
        reference = reference_variant(
            self.catalog(),
            served.language,
            self.runtime,
            self.options.reference_variant,
            self.options.min_eval_utterances,
        )
        if reference is None:
            self.metrics.shadow_jobs.labels(outcome="no_reference").inc()
            return
        if reference in outputs:
            reference_text = outputs[reference][0]
        else:
            started = time.perf_counter()
            reference_text, _ = await self.runner(reference, job.audio, job.options)
            logger.debug("reference %s took %.2f s", reference, time.perf_counter() - started)
        scored = False
        for variant, (text, arm) in outputs.items():
            if variant == reference:
                continue
            counts = self.live_cer.record(
                variant=variant,
                language=served.language,
                source="shadow",
                reference=reference_text,
                hypothesis=text,
                arm=arm,
            )
            scored = scored or counts is not None
        outcome = "scored" if scored else ("is_reference" if served.variant == reference else "no_reference")
        self.metrics.shadow_jobs.labels(outcome=outcome).inc()
