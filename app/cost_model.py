"""What a request is expected to cost on a variant: an encoder part per window, a decoder part per second.

Whisper's encoder sees 30 s of features per window whatever the audio's length (a 2 s clip costs a
full 30 s encoder pass), unless the variant trims its audio context (it then sees about the audio's
own length, see :func:`model_store.features.encoded_seconds`); the decoder's work follows the speech.
A cost proportional to duration alone would charge a 2 s clip a fifteenth of a 30 s one on a
full-context variant, and rank full-context and trimmed variants by their cost on the timed clips'
length only.

A variant's latency figures (``Latency``) give both parts: ``language_detection_ms`` is one encoder
pass over a timed clip's first window (plus one decoder step), and the rest of the clip's measured
time is the decoder's. A variant measured before hush timed detection, or known only through a prior,
has a cost proportional to duration.
"""

from __future__ import annotations

from dataclasses import dataclass

from model_store.features import encoded_seconds
from model_store.manifest import Latency
from model_store.transcription import CHUNK_SECONDS

MIN_AUDIO_SECONDS = 0.01  # a floor for the duration, so that an empty clip still has a cost


@dataclass(frozen=True)
class CostModel:
    """Expected milliseconds of a transcription on one variant, from the audio's duration."""

    encoder_ms_per_second: float  # per second of features the encoder sees
    decoder_ms_per_audio_second: float  # the rest: features, decoding, per second of audio
    audio_context_seconds: float | None = None  # the variant's trimmed context (None: full 30 s)

    @classmethod
    def proportional(cls, ms_per_audio_second: float) -> CostModel:
        """A cost proportional to duration (no split known)."""
        return cls(0.0, ms_per_audio_second)

    @classmethod
    def from_latency(cls, latency: Latency, audio_context_seconds: float | None) -> CostModel:
        """Split a measured latency into its encoder and decoder parts (proportional when it can't be)."""
        if latency.language_detection_ms is None or not latency.clip_seconds:
            return cls.proportional(latency.ms_per_audio_second)
        clip_seconds = latency.clip_seconds
        clip_ms = latency.ms_per_audio_second * clip_seconds
        encoder_ms = min(latency.language_detection_ms, clip_ms)  # noise can't make the decoder negative
        return cls(
            encoder_ms / encoded_seconds(clip_seconds, audio_context_seconds),
            (clip_ms - encoder_ms) / clip_seconds,
            audio_context_seconds,
        )

    @property
    def split(self) -> bool:
        """Whether the encoder's part is known (else the cost is proportional to duration)."""
        return self.encoder_ms_per_second > 0

    def expected_ms(self, audio_seconds: float, *, first_window_encoded: bool = False) -> float:
        """``first_window_encoded``: the variant detected the clip's language, so the transcription
        takes its first window's encoding back (:mod:`model_store.encoded_windows`) when the clip fits
        one window (a longer clip's first window is cut from features of the whole clip, which differ
        at the window's edge, so it is encoded again)."""
        seconds = max(audio_seconds, MIN_AUDIO_SECONDS)
        encoder_ms = 0.0
        if self.split:
            encoded = encoded_seconds(seconds, self.audio_context_seconds)
            if first_window_encoded and seconds <= CHUNK_SECONDS:
                encoded = 0.0
            encoder_ms = self.encoder_ms_per_second * encoded
        return max(encoder_ms + self.decoder_ms_per_audio_second * seconds, 1e-6)
