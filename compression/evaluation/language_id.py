"""How well, and how fast, a variant identifies the language: ``hush eval language-id VARIANT...``.

The server detects a request's language with one variant's ``detect_language`` on the first 30 s of
audio (``app.language``); this runs the same call on each utterance of a corpus split and counts how
often the most probable language is the utterance's own, per language, with the median time of a
detection. Nothing is recorded in the manifest (the router reads ``language_detection_ms`` from the
latency measurement); the table is for choosing ``HUSH_SERVER__LANGUAGE_DETECTION_VARIANT``.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from tqdm import tqdm

from compression.data.corpus import Utterance
from model_store.opener import open_variant
from model_store.settings import RuntimeSettings
from model_store.store import ModelStore
from model_store.transcription import CHUNK_SAMPLES


@dataclass(frozen=True)
class LanguageIdResult:
    """One variant's language identification on a set of utterances."""

    variant_id: str
    utterances: Counter[str]  # language -> utterances
    correct: Counter[str]  # language -> utterances identified as their own language
    median_ms: float

    @property
    def accuracy(self) -> float:
        total = sum(self.utterances.values())
        return sum(self.correct.values()) / total if total else 0.0

    def accuracy_for(self, languages: Sequence[str]) -> float:
        total = sum(self.utterances[language] for language in languages)
        return sum(self.correct[language] for language in languages) / total if total else 0.0


def identify_languages(
    store: ModelStore,
    variant_id: str,
    utterances: Sequence[Utterance],
    runtime: RuntimeSettings,
    *,
    progress: bool = True,
) -> LanguageIdResult:
    """Detect the language of each utterance's first window with ``variant_id``."""
    if not store.get(variant_id).multilingual:
        raise ValueError(f"{variant_id} is English-only: it identifies no language")
    transcriber = open_variant(store, variant_id, runtime, verify=False)
    totals: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    timings: list[float] = []
    try:
        for utterance in tqdm(utterances, desc=f"language-id {variant_id}", unit="utt", disable=not progress):
            audio = utterance.load_audio()[:CHUNK_SAMPLES]
            started = time.perf_counter()
            probabilities = transcriber.detect_language(audio)
            timings.append(1000 * (time.perf_counter() - started))
            totals[utterance.language] += 1
            if max(probabilities, key=probabilities.__getitem__, default=None) == utterance.language:
                correct[utterance.language] += 1
    finally:
        transcriber.close()
    return LanguageIdResult(variant_id, totals, correct, statistics.median(timings) if timings else 0.0)


def language_id_table(results: Sequence[LanguageIdResult]) -> Iterator[str]:
    """A markdown table: overall accuracy, accuracy per language, median detection time."""
    languages = sorted({language for result in results for language in result.utterances})
    yield "| detector | correct | " + " | ".join(languages) + " | median ms |"
    yield "|---" * (len(languages) + 3) + "|"
    for result in results:
        cells = [f"{result.accuracy_for([language]):.2f}" for language in languages]
        yield (
            f"| {result.variant_id} | {result.accuracy:.1%} | "
            + " | ".join(cells)
            + f" | {result.median_ms:.0f} |"
        )
