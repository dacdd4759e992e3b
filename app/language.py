"""The request's language: checked when given, detected when not.

Detection is one encoder pass (and one decoder step) of the smallest multilingual variant that runs
here (the quickest measured detector of that size), on the first 30 s of audio, through the same
inference queue as transcriptions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

from app.inference import InferenceQueue
from app.pool import VariantPool
from model_store.errors import UnsupportedLanguageError
from model_store.manifest import ALL_LANGUAGES, Manifest
from model_store.opener import runnable_here
from model_store.settings import RuntimeSettings
from model_store.transcription import CHUNK_SAMPLES, Audio

ASSUMED_LANGUAGE = "en"  # when no multilingual variant can tell: every Whisper knows English


def normalise_language(value: str) -> str:
    """An ISO 639-1 code Whisper knows, from a code or a name ("en", "EN", "english", "castilian")."""
    text = value.strip().lower()
    if text in LANGUAGES:
        return text
    if text in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[text]
    raise UnsupportedLanguageError(value, list(LANGUAGES))


def language_name(code: str) -> str:
    """Whisper's English name of a language ("en" -> "english"), as OpenAI's verbose_json reports it."""
    return LANGUAGES.get(code, code)


@dataclass(frozen=True)
class LanguageGuess:
    """A detected language."""

    language: str
    probability: float | None  # None when it was assumed, not detected
    variant_id: str | None  # the variant that detected it

    def describe(self) -> str:
        if self.variant_id is None or self.probability is None:
            return f"language {self.language} assumed (no multilingual variant to detect it)"
        return f"language {self.language} detected by {self.variant_id} (p={self.probability:.2f})"


def detection_variant(
    manifests: Sequence[Manifest], runtime: RuntimeSettings, preferred: str | None = None
) -> Manifest | None:
    """The variant that detects languages: ``preferred`` if it is there, else the smallest multilingual
    one meant for every language (a student or an experts variant trained on a few languages is no
    judge of the others), else the smallest multilingual one; among those of that size, the one whose
    measured detection is quickest (an int8 or trimmed-context variant of the same model identified
    languages about as well as the float one on the dev split, in a quarter of the time)."""
    runnable = [m for m in manifests if m.multilingual and runnable_here(m, runtime)]
    for manifest in runnable:
        if manifest.id == preferred:
            return manifest
    general = [m for m in runnable if ALL_LANGUAGES in m.languages] or runnable
    return min(general, key=lambda m: (m.parameters, _detection_ms(m), m.id), default=None)


def _detection_ms(manifest: Manifest) -> float:
    """Measured milliseconds of one detection; unmeasured variants come after measured ones."""
    latency = manifest.latency
    if latency is None or latency.language_detection_ms is None:
        return math.inf
    return latency.language_detection_ms


class LanguageDetector:
    """Detects the language of a clip with the pool's detection variant."""

    def __init__(
        self,
        pool: VariantPool,
        queue: InferenceQueue,
        *,
        preferred_variant: str | None = None,
        timeout_seconds: float | None = None,
    ) -> None:
        self._pool = pool
        self._queue = queue
        self._runtime = RuntimeSettings(device=pool.runtime.resolved_device())
        self._preferred = preferred_variant
        self._timeout = timeout_seconds

    def variant(self) -> Manifest | None:
        return detection_variant(self._pool.manifests(), self._runtime, self._preferred)

    async def detect(self, audio: Audio) -> LanguageGuess:
        manifest = self.variant()
        if manifest is None:
            return LanguageGuess(ASSUMED_LANGUAGE, None, None)
        first_window = audio[:CHUNK_SAMPLES]
        with self._pool.lease(manifest.id) as lease:
            timed = await self._queue.run(
                lambda: lease.transcriber().detect_language(first_window), timeout_seconds=self._timeout
            )
        language, probability = max(
            timed.value.items(), key=lambda item: item[1], default=(ASSUMED_LANGUAGE, 0.0)
        )
        return LanguageGuess(language, probability, manifest.id)
