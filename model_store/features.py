"""Whisper's log-mel spectrogram, computed once over a whole clip and then cut into 30 s windows.

Same recipe as OpenAI Whisper's ``log_mel_spectrogram``: 25 ms periodic-Hann windows every 10 ms
(centred, reflect-padded, the last frame dropped), power spectrum, mel filterbank, log10, floor at
(max - 8), then scaled to about [-1, 1].

Computed with NumPy so that engines which do not need torch (CTranslate2) never import it: torch
alone costs about 200 MB of resident memory. :func:`log_mel_spectrogram` wraps the result as a
tensor for callers that want one.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import numpy.typing as npt
from transformers.audio_utils import mel_filter_bank

from model_store.transcription import (
    CHUNK_FRAMES,
    CHUNK_SAMPLES,
    FRAMES_PER_SECOND,
    HOP_LENGTH,
    SAMPLE_RATE,
    Audio,
)

if TYPE_CHECKING:
    import torch

N_FFT = 400  # 25 ms windows at 16 kHz
_FRAMES_PER_BLOCK = 4096  # frames transformed at once, so an hour of audio never holds its whole spectrum

Mel = npt.NDArray[np.float32]
Features = TypeVar("Features", "npt.NDArray[np.float32]", "torch.Tensor")


@lru_cache(maxsize=4)
def _mel_filters(n_mels: int) -> Mel:
    # The filterbank of transformers' WhisperFeatureExtractor (whose module imports torch), built directly.
    filters = mel_filter_bank(
        num_frequency_bins=N_FFT // 2 + 1,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )  # (n_fft // 2 + 1, n_mels)
    return np.ascontiguousarray(np.asarray(filters, dtype=np.float32).T)


@lru_cache(maxsize=1)
def _periodic_hann() -> Mel:
    steps = np.arange(N_FFT, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * steps / N_FFT)).astype(np.float32)


def log_mel(audio: Audio, n_mels: int = 80, *, pad_samples: int = CHUNK_SAMPLES) -> Mel:
    """(n_mels, frames) float32 features of ``audio`` followed by ``pad_samples`` of silence."""
    waveform = np.ascontiguousarray(audio, dtype=np.float32)
    if pad_samples:
        waveform = np.pad(waveform, (0, pad_samples))
    padded = np.pad(waveform, N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH][:-1]
    filters = _mel_filters(n_mels)
    hann = _periodic_hann()
    mel = np.empty((n_mels, len(frames)), dtype=np.float32)
    for start in range(0, len(frames), _FRAMES_PER_BLOCK):
        block = frames[start : start + _FRAMES_PER_BLOCK]
        spectrum = np.fft.rfft(block * hann, axis=-1)
        power = spectrum.real**2 + spectrum.imag**2
        mel[:, start : start + len(block)] = filters @ power.T
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32, copy=False)


def log_mel_spectrogram(audio: Audio, n_mels: int = 80, *, pad_samples: int = CHUNK_SAMPLES) -> torch.Tensor:
    """:func:`log_mel` as a torch tensor."""
    import torch

    return torch.from_numpy(log_mel(audio, n_mels, pad_samples=pad_samples))


CONTEXT_MARGIN_FRAMES = FRAMES_PER_SECOND  # a trimmed window keeps at least 1 s of padding after the audio
CONTEXT_STEP_FRAMES = (
    2 * FRAMES_PER_SECOND
)  # and is a whole number of 2 s steps long (few distinct encoder shapes)


def encoder_frames(content_frames: int, audio_context_seconds: float | None) -> int:
    """How many frames of a window the encoder sees.

    Whisper always encodes 30 s (3,000 frames), padding included: a 3 s clip costs a full 30 s encoder
    pass. A variant with a trimmed audio context (``audio_context_seconds``, see the manifest) encodes
    only the window's audio plus at least a second of padding, rounded up to 2 s steps, and never less
    than ``audio_context_seconds``; ``None`` keeps the full window.
    """
    if audio_context_seconds is None:
        return CHUNK_FRAMES
    steps = -(-(content_frames + CONTEXT_MARGIN_FRAMES) // CONTEXT_STEP_FRAMES)
    wanted = max(round(audio_context_seconds * FRAMES_PER_SECOND), steps * CONTEXT_STEP_FRAMES)
    return min(CHUNK_FRAMES, wanted)


def encoded_seconds(audio_seconds: float, audio_context_seconds: float | None) -> float:
    """Seconds of features the encoder sees for a clip of ``audio_seconds``, its 30 s windows taken
    back to back (:func:`encoder_frames` for each): 30 per window with Whisper's full context, about
    the audio's own length with a trimmed one. The encoder's share of a transcription's cost follows it."""
    remaining = max(1, round(audio_seconds * FRAMES_PER_SECOND))
    frames = 0
    while remaining > 0:
        frames += encoder_frames(min(CHUNK_FRAMES, remaining), audio_context_seconds)
        remaining -= CHUNK_FRAMES
    return frames / FRAMES_PER_SECOND


def window(mel: Features, start_frame: int) -> Features:
    """The 30 s window of ``mel`` (array or tensor) starting at ``start_frame``, zero-padded to 3,000 frames."""
    segment = mel[:, start_frame : start_frame + CHUNK_FRAMES]
    missing = CHUNK_FRAMES - segment.shape[-1]
    if missing <= 0:
        return segment
    if isinstance(segment, np.ndarray):
        return np.pad(segment, ((0, 0), (0, missing)))
    import torch

    return torch.nn.functional.pad(segment, (0, missing))
