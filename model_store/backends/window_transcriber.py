"""The part of a transcriber every backend shares: features, language resolution, the long-form driver.

A backend supplies a :class:`LanguageDecoder` (encode and decode one 30 s window, score languages);
the features are hush's own log-mel spectrogram whatever the engine, so variants of one teacher
compare on identical input.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any, Protocol

from transformers import WhisperTokenizer

from model_store.batching import BatchedDecoder, BatchEncoder, StageObserver
from model_store.encoded_windows import EncodedWindows
from model_store.errors import UnsupportedLanguageError
from model_store.features import encoder_frames, log_mel, window
from model_store.longform import WindowDecoder, transcribe_mel
from model_store.manifest import Manifest
from model_store.settings import BatchingSettings
from model_store.transcription import CHUNK_FRAMES, SAMPLE_RATE, Audio, TranscribeOptions, Transcription
from model_store.whisper_tokens import SpecialTokens


class TokenizerText:
    """Text of tokens and tokens of text, the same for every backend (both use transformers' tokenizer)."""

    tokenizer: WhisperTokenizer
    tokens: SpecialTokens

    def text(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode([token for token in tokens if token < self.tokens.eot]))

    def text_tokens(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))


class LanguageDecoder(WindowDecoder, Protocol):
    """A window decoder that also scores the languages of an encoded window."""

    accepts_short_windows: bool  # whether ``encode`` takes fewer than 3,000 frames (trimmed context)

    def language_probabilities(self, encoded: Any) -> dict[str, float]:
        """Probability of each language, most likely first (``{"en": 1.0}`` for English-only models)."""
        ...

    def seed_sampling(self, seed: int) -> None:
        """Start sampling (temperature > 0) afresh from ``seed``."""
        ...


class WindowTranscriber:
    """Transcribes audio of any length with a backend's :class:`LanguageDecoder`.

    With ``batching``, the windows of concurrent requests share the backend's engine calls (see
    :mod:`model_store.batching`); a backend without ``encode_batch`` runs unbatched.
    """

    def __init__(
        self,
        manifest: Manifest,
        decoder: LanguageDecoder,
        n_mels: int,
        batching: BatchingSettings | None = None,
    ) -> None:
        if manifest.audio_context_seconds is not None and not decoder.accepts_short_windows:
            raise ValueError(
                f"variant {manifest.id!r} trims the audio context, which its {manifest.backend} backend "
                "cannot run (CTranslate2 only)"
            )
        self.manifest = manifest
        self._decoder = decoder
        self.n_mels = n_mels
        self.batching: BatchedDecoder | None = None
        if batching is not None and batching.max_batch > 1 and isinstance(decoder, BatchEncoder):
            self.batching = BatchedDecoder(decoder, batching, manifest.id)
        self._driver: LanguageDecoder = self.batching or decoder
        self._encoded_first_windows = EncodedWindows()

    @property
    def languages(self) -> list[str]:
        return list(self._decoder.tokens.languages) or ["en"]

    @property
    def batched(self) -> bool:
        return self.batching is not None

    def observe_batches(self, observer: StageObserver | None) -> None:
        """Report each batched engine call to ``observer`` (nothing happens when unbatched)."""
        if self.batching is not None:
            self.batching.observe(observer)

    def detect_language(self, audio: Audio) -> dict[str, float]:
        with self._session():
            mel = log_mel(audio, self.n_mels)
            # Kept for a transcription of the same clip on this variant (the server detects, then
            # routes, often here): it takes the encoder output back instead of computing it again.
            encoded = self._encoded_first_windows.remember(self._first_window(mel), self._driver.encode)
            return self._driver.language_probabilities(encoded)

    def transcribe(self, audio: Audio, options: TranscribeOptions) -> Transcription:
        if not self.manifest.timestamps:  # trained on text only: timestamp tokens would be off its data
            options = replace(options, without_timestamps=True)
        with self._session():
            return self._transcribe(audio, options)

    def close(self) -> None:
        """Stop batching (the subclasses release the model)."""
        if self.batching is not None:
            self.batching.close()

    def _session(self) -> contextlib.AbstractContextManager[None]:
        return self.batching.session() if self.batching is not None else contextlib.nullcontext()

    def _first_window(self, mel: Any) -> Any:
        """The encoder's input for the first window (trimmed where the variant trims its context)."""
        content_frames = min(CHUNK_FRAMES, mel.shape[-1] - CHUNK_FRAMES)
        return window(mel, 0)[:, : encoder_frames(content_frames, self.manifest.audio_context_seconds)]

    def _transcribe(self, audio: Audio, options: TranscribeOptions) -> Transcription:
        duration = len(audio) / SAMPLE_RATE
        mel = log_mel(audio, self.n_mels)
        content_frames = mel.shape[-1] - CHUNK_FRAMES  # the features end with 30 s of padding
        first_window = self._first_window(mel)
        first_window_encoded = self._encoded_first_windows.take(first_window)  # from detect_language
        if first_window_encoded is None and self._detects(options.language):
            first_window_encoded = self._driver.encode(first_window)  # encoded once: detection and text
        language, probability, all_probabilities = self._resolve_language(
            options.language, first_window_encoded
        )
        language_token = (
            self._decoder.tokens.languages.get(language) if self._decoder.tokens.languages else None
        )
        self._driver.seed_sampling(options.seed)
        segments = transcribe_mel(
            self._driver,
            mel,
            content_frames,
            language_token,
            options,
            language,
            self.manifest.audio_context_seconds,
            first_window_encoded,
        )
        return Transcription(
            text="".join(segment.text for segment in segments).strip(),
            segments=tuple(segments),
            language=language,
            language_probability=probability,
            duration=duration,
            variant_id=self.manifest.id,
            all_language_probabilities=all_probabilities,
        )

    def _detects(self, requested: str | None) -> bool:
        """Whether a request for ``requested`` detects its language (none given, a multilingual model)."""
        return requested is None and bool(self._decoder.tokens.languages)

    def _resolve_language(
        self, requested: str | None, first_window_encoded: Any | None
    ) -> tuple[str, float | None, dict[str, float]]:
        known = self.languages
        if requested is not None:
            if requested not in known:
                raise UnsupportedLanguageError(requested, known)
            return requested, None, {}
        if not self._detects(requested):
            return "en", None, {}
        probabilities = self._driver.language_probabilities(first_window_encoded)
        language, probability = next(iter(probabilities.items()))
        return language, probability, probabilities
