"""The clips a variant's latency is timed on: the same duration profile for every variant.

Whisper pays a full 30 s encoder pass per window however short the clip, so milliseconds per audio
second measured on 1 s clips is several times what the same model costs on 10 s clips. The corpus's
English dev clips are short (0.7 to 5 s) and other languages' are longer, so timing an English-only
variant on its own languages' clips made it look slower than a multilingual one timed on longer clips,
and routing, which compares these figures, was skewed against it.

Every variant is therefore timed on clips of about ``target_seconds``: consecutive dev utterances of
one language joined (with a short silence between them) until the clip is long enough, the languages
the variant covers taken in turn. Variants differ in which languages they hear, not in how long their
clips are, so their figures compare.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compression.data.corpus import Corpus, Utterance
from model_store.audio import decode_audio
from model_store.manifest import Manifest
from model_store.transcription import CHUNK_SECONDS, SAMPLE_RATE, Audio

GAP_SECONDS = 0.3  # silence between joined utterances
MAX_CLIP_SECONDS = CHUNK_SECONDS - 1.0  # a latency clip stays within one Whisper window


@dataclass(frozen=True)
class LatencyClip:
    """Utterances of one language, joined into one clip."""

    paths: tuple[Path, ...]
    language: str
    seconds: float

    def load(self) -> Audio:
        gap = np.zeros(int(GAP_SECONDS * SAMPLE_RATE), dtype=np.float32)
        pieces: list[Audio] = []
        for index, path in enumerate(self.paths):
            if index:
                pieces.append(gap)
            pieces.append(decode_audio(path))
        return np.concatenate(pieces).astype(np.float32, copy=False)


def _join(utterances: Sequence[Utterance], target_seconds: float) -> list[LatencyClip]:
    """One language's utterances, in corpus order, joined into clips of at least ``target_seconds``
    (the last, shorter remainder dropped unless it is the only clip)."""
    clips: list[LatencyClip] = []
    paths: list[Path] = []
    seconds = 0.0
    for utterance in utterances:
        added = utterance.duration + (GAP_SECONDS if paths else 0.0)
        if paths and seconds + added > MAX_CLIP_SECONDS:
            clips.append(LatencyClip(tuple(paths), utterance.language, round(seconds, 2)))
            paths, seconds, added = [], 0.0, utterance.duration
        paths.append(utterance.audio_path)
        seconds += added
        if seconds >= target_seconds:
            clips.append(LatencyClip(tuple(paths), utterance.language, round(seconds, 2)))
            paths, seconds = [], 0.0
    if paths and not clips:
        clips.append(LatencyClip(tuple(paths), utterances[0].language, round(seconds, 2)))
    return clips


def latency_clips(corpus: Corpus, manifest: Manifest, count: int, target_seconds: float) -> list[LatencyClip]:
    """``count`` clips of about ``target_seconds`` from the dev split, languages the variant covers in
    turn (alphabetical), deterministic for a corpus."""
    by_language: dict[str, list[Utterance]] = {}
    for utterance in corpus.utterances("dev"):
        if manifest.covers(utterance.language):
            by_language.setdefault(utterance.language, []).append(utterance)
    joined = {language: _join(utterances, target_seconds) for language, utterances in by_language.items()}
    clips: list[LatencyClip] = []
    while len(clips) < count and any(joined.values()):
        for language in sorted(joined):
            if joined[language] and len(clips) < count:
                clips.append(joined[language].pop(0))
    return clips
