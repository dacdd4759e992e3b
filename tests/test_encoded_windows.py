"""A variant that detects a clip's language reuses that first-window encoder pass to transcribe it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from model_store.encoded_windows import EncodedWindows
from model_store.opener import open_variant
from model_store.settings import RuntimeSettings
from model_store.store import ModelStore
from model_store.transcription import SAMPLE_RATE, Audio, TranscribeOptions
from tests.factories import recorded_encoder_inputs

QUICK = TranscribeOptions(temperatures=(0.0,), max_new_tokens=12)


def test_only_identical_features_are_reused_and_only_once() -> None:
    windows = EncodedWindows(capacity=2)
    calls: list[int] = []

    def encode(features: Any) -> float:
        calls.append(1)
        return float(features.sum())

    first = np.ones((80, 400), dtype=np.float32)
    assert windows.take(first) is None  # nothing remembered yet
    assert windows.remember(first, encode) == 32_000.0
    assert windows.take(first + 1e-3) is None  # other features: no reuse
    assert windows.take(first) == 32_000.0
    assert windows.take(first) is None  # taken once, then forgotten
    for scale in (2, 3, 4):
        windows.remember(first * scale, encode)
    assert len(windows) == 2 and windows.take(first * 2) is None  # the oldest was evicted
    assert len(calls) == 4


@pytest.fixture()
def clip(jfk_audio: Audio) -> Audio:
    return jfk_audio[: 3 * SAMPLE_RATE]


def test_detect_then_transcribe_encodes_the_first_window_once(tiny_store: ModelStore, clip: Audio) -> None:
    runtime = RuntimeSettings(device="cpu")
    fresh = open_variant(tiny_store, "tiny-random", runtime)
    expected = fresh.transcribe(
        clip, TranscribeOptions(language="en", temperatures=(0.0,), max_new_tokens=12)
    )
    transcriber = open_variant(tiny_store, "tiny-random", runtime)
    encodes = recorded_encoder_inputs(transcriber)
    transcriber.detect_language(clip)  # the server's detection step, on the variant it then routes to
    result = transcriber.transcribe(
        clip, TranscribeOptions(language="en", temperatures=(0.0,), max_new_tokens=12)
    )
    assert len(encodes) == 1
    assert result.segments == expected.segments
    transcriber.transcribe(clip, TranscribeOptions(language="en", temperatures=(0.0,), max_new_tokens=12))
    assert len(encodes) == 2  # nothing remembered any more: encoded afresh


def test_a_transcription_that_detects_its_language_encodes_once(tiny_store: ModelStore, clip: Audio) -> None:
    transcriber = open_variant(tiny_store, "tiny-random", RuntimeSettings(device="cpu"))
    encodes = recorded_encoder_inputs(transcriber)
    result = transcriber.transcribe(clip, QUICK)
    assert result.language_probability is not None  # detected, not given
    assert len(encodes) == 1
