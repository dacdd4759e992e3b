"""What a transcriber takes and returns, independent of the backend that runs the model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from model_store.manifest import Manifest

SAMPLE_RATE = 16_000  # Whisper's input rate, Hz
CHUNK_SECONDS = 30  # Whisper's window
CHUNK_SAMPLES = SAMPLE_RATE * CHUNK_SECONDS  # 480,000 samples in a window
HOP_LENGTH = 160  # samples between spectrogram frames: 100 frames per second
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100
CHUNK_FRAMES = CHUNK_SAMPLES // HOP_LENGTH  # 3,000 frames in a window's mel spectrogram
TIME_PRECISION = 0.02  # seconds per timestamp token (two frames, after the encoder's stride of 2)

Audio = npt.NDArray[np.float32]
Task = Literal["transcribe", "translate"]
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class TranscribeOptions:
    """How to decode. Defaults follow OpenAI Whisper's ``transcribe``."""

    language: str | None = None  # ISO 639-1 code; None detects it from the first window
    task: Task = "transcribe"  # "translate" outputs English
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES  # fallback schedule; the first is used first
    initial_prompt: str | None = None  # text that conditions the first window
    condition_on_previous_text: bool = True  # feed each window's text as the next one's prompt
    compression_ratio_threshold: float | None = 2.4  # above it (repetitive output) retry hotter
    log_prob_threshold: float | None = -1.0  # below it (unsure output) retry hotter
    no_speech_threshold: float | None = 0.6  # with a low log-prob, above it the window is silence
    without_timestamps: bool = False  # decode text only (faster, one segment per window)
    word_timestamps: bool = False  # also time each word (cross-attention alignment)
    max_new_tokens: int | None = None  # per window; None fills the decoder's context
    seed: int = 0  # for sampling at temperature > 0


@dataclass(frozen=True)
class Word:
    """A word with its time span, when word timestamps were asked for."""

    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    """A piece of the transcript with its time span and Whisper's confidence signals."""

    id: int
    start: float  # seconds from the start of the audio
    end: float
    text: str
    tokens: tuple[int, ...]
    avg_logprob: float  # mean log-probability of the window's sampled tokens
    compression_ratio: float  # gzip ratio of the window's text; high means repetition
    no_speech_prob: float  # probability of the no-speech token at the window's start
    temperature: float  # the temperature the window was decoded at
    words: tuple[Word, ...] | None = None  # only with ``word_timestamps``
    seek: int = 0  # mel frame (10 ms) where the 30 s window it was decoded in starts (OpenAI's ``seek``)


@dataclass(frozen=True)
class Transcription:
    """The result of transcribing one audio clip."""

    text: str
    segments: tuple[Segment, ...]
    language: str
    language_probability: float | None  # None when the language was given, not detected
    duration: float  # seconds of audio
    variant_id: str
    all_language_probabilities: dict[str, float] = field(default_factory=dict)


class Transcriber(Protocol):
    """A variant opened for inference."""

    manifest: Manifest

    def transcribe(self, audio: Audio, options: TranscribeOptions) -> Transcription:
        """Transcribe 16 kHz mono float32 audio of any length."""
        ...

    def detect_language(self, audio: Audio) -> dict[str, float]:
        """Language probabilities from the first 30 s window, most likely first."""
        ...

    def close(self) -> None:
        """Release the model's memory."""
        ...
