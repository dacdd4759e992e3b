"""Whisper's log-mel spectrogram, computed once over a whole clip and then cut into 30 s windows.

Same recipe as OpenAI Whisper's ``log_mel_spectrogram``: 25 ms Hann windows every 10 ms, power
spectrum, mel filterbank, log10, floor at (max - 8), then scaled to about [-1, 1].
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from transformers import WhisperFeatureExtractor

from model_store.transcription import CHUNK_FRAMES, CHUNK_SAMPLES, HOP_LENGTH, Audio

N_FFT = 400  # 25 ms windows at 16 kHz


@lru_cache(maxsize=4)
def _mel_filters(n_mels: int) -> torch.Tensor:
    filters = WhisperFeatureExtractor(feature_size=n_mels).mel_filters  # (n_fft // 2 + 1, n_mels)
    return torch.from_numpy(np.asarray(filters, dtype=np.float32)).T.contiguous()


def log_mel_spectrogram(audio: Audio, n_mels: int = 80, *, pad_samples: int = CHUNK_SAMPLES) -> torch.Tensor:
    """(n_mels, frames) features of ``audio`` followed by ``pad_samples`` of silence."""
    waveform = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    if pad_samples:
        waveform = torch.nn.functional.pad(waveform, (0, pad_samples))
    window = torch.hann_window(N_FFT)
    stft = torch.stft(waveform, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    power = stft[..., :-1].abs() ** 2
    mel = _mel_filters(n_mels) @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def window(mel: torch.Tensor, start_frame: int) -> torch.Tensor:
    """The 30 s window of ``mel`` starting at ``start_frame``, padded with zeros to 3,000 frames."""
    segment = mel[:, start_frame : start_frame + CHUNK_FRAMES]
    if segment.shape[-1] < CHUNK_FRAMES:
        segment = torch.nn.functional.pad(segment, (0, CHUNK_FRAMES - segment.shape[-1]))
    return segment
