"""hush's NumPy log-mel features against transformers' Whisper feature extractor, and the import
graph that keeps torch out of the CTranslate2 path."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from transformers import WhisperFeatureExtractor

from model_store.features import encoded_seconds, encoder_frames, log_mel, log_mel_spectrogram, window
from model_store.transcription import CHUNK_FRAMES, CHUNK_SAMPLES, Audio


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_transformers_on_a_30_second_window(jfk_audio: Audio, n_mels: int) -> None:
    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    expected = extractor(jfk_audio, sampling_rate=16000, return_tensors="np").input_features[0]
    ours = window(log_mel(jfk_audio, n_mels, pad_samples=CHUNK_SAMPLES - len(jfk_audio)), 0)
    assert ours.shape == expected.shape == (n_mels, CHUNK_FRAMES)
    assert np.abs(ours - expected).max() < 1e-4


def test_long_audio_is_transformed_in_blocks_without_seams() -> None:
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(16000 * 70)).astype(np.float32)  # spans several blocks
    whole = log_mel(audio)
    assert whole.shape == (80, 7000 + CHUNK_FRAMES)
    tail = log_mel(audio[16000 * 40 :], pad_samples=0)
    # Noise never reaches the clip-wide (max - 8) floor, so frames away from the cut are the same.
    assert np.abs(whole[:, 4100:6900] - tail[:, 100:2900]).max() < 1e-4


def test_tensor_wrapper_and_window_padding_agree(jfk_audio: Audio) -> None:
    array = log_mel(jfk_audio[:16000])
    tensor = log_mel_spectrogram(jfk_audio[:16000])
    assert np.array_equal(tensor.numpy(), array)
    assert window(array, 200).shape == (80, CHUNK_FRAMES)
    assert tuple(window(tensor, 200).shape) == (80, CHUNK_FRAMES)
    assert np.array_equal(window(tensor, 200).numpy(), window(array, 200))


def test_the_ctranslate2_path_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "import model_store.opener, model_store.backends.ctranslate2_backend, model_store.features\n"
        "from model_store.backends.window_transcriber import WindowTranscriber\n"
        "import model_store.audio, model_store.store\n"
        "import app.main\n"  # the server starts without torch: a CTranslate2 store never needs it
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_trimmed_audio_context_keeps_the_audio_and_a_second_of_padding() -> None:
    assert encoder_frames(300, None) == CHUNK_FRAMES  # Whisper's full window by default
    assert encoder_frames(300, 1.0) == 400  # 3 s of audio + 1 s, already a whole 2 s step
    assert encoder_frames(350, 1.0) == 600  # 3.5 s + 1 s, rounded up to 6 s
    assert encoder_frames(300, 15.0) == 1500  # never under the variant's minimum
    assert encoder_frames(2950, 1.0) == CHUNK_FRAMES  # never over 30 s


def test_encoded_seconds_count_what_the_encoder_sees_per_window() -> None:
    assert encoded_seconds(2.0, None) == 30.0  # a short clip pays Whisper's whole window
    assert encoded_seconds(31.0, None) == 60.0  # a second window past 30 s
    assert encoded_seconds(2.0, 10.0) == 10.0  # a trimmed context: its minimum
    assert encoded_seconds(25.0, 10.0) == 26.0  # the audio, a second of padding, whole 2 s steps
    assert encoded_seconds(31.0, 10.0) == 40.0  # 30 s, then 1 s of audio at the minimum
